"""Backbones built on torch.nn's recurrent layers, so they get cuDNN on GPU and oneDNN on CPU."""

from __future__ import annotations

from torch import nn


class _TorchRecurrentMixin:
    """batch_first everywhere; dropout only between stacked layers (torch warns otherwise)."""

    carries_cell_state = False  # state is h alone; LSTMs carry (h, c)

    def _init_torch(self, base: type[nn.RNNBase], input_size: int, hidden_size: int,
                    num_layers: int, dropout: float, bidirectional: bool, **kwargs) -> None:
        base.__init__(self, input_size, hidden_size, num_layers=num_layers, batch_first=True,
                      dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional,
                      **kwargs)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions


class LSTMBackbone(_TorchRecurrentMixin, nn.LSTM):
    carries_cell_state = True

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        self._init_torch(nn.LSTM, input_size, hidden_size, num_layers, dropout, bidirectional)


class GRUBackbone(_TorchRecurrentMixin, nn.GRU):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        self._init_torch(nn.GRU, input_size, hidden_size, num_layers, dropout, bidirectional)


class RNNBackbone(_TorchRecurrentMixin, nn.RNN):
    """Elman RNN with tanh."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False) -> None:
        self._init_torch(nn.RNN, input_size, hidden_size, num_layers, dropout, bidirectional,
                         nonlinearity="tanh")
