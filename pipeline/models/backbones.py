"""The recurrent backbones: what every one of them provides, and the table of variant names."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from pipeline.errors import ConfigError
from pipeline.models.custom import CoupledBackbone, PeepholeBackbone
from pipeline.models.recurrent import GRUBackbone, LSTMBackbone, RNNBackbone

# h alone (GRU, RNN) or (h, c) (LSTM family); each tensor (num_layers * num_directions, batch, hidden)
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class Backbone(Protocol):
    """A stacked recurrent nn.Module read batch-first, like torch.nn.LSTM(batch_first=True).

    Calling it with x (batch, time, input_size) and an optional initial state returns
    outputs (batch, time, output_size) and the final state. In `outputs`, a bidirectional
    backbone puts the forward direction's features first and the reverse direction's second.
    """

    @property
    def output_size(self) -> int:
        """Features per step of `outputs`: hidden_size * num_directions."""
        ...

    @property
    def num_directions(self) -> int:
        """2 when bidirectional, else 1."""
        ...

    @property
    def carries_cell_state(self) -> bool:
        """True when the state is (h, c) rather than h."""
        ...

    def __call__(self, x: torch.Tensor,
                 state: State | None = None) -> tuple[torch.Tensor, State]: ...


class BackboneClass(Protocol):
    """How every backbone is constructed (the keyword names are the config's)."""

    def __call__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False) -> Backbone: ...


BACKBONES: dict[str, BackboneClass] = {
    "lstm": LSTMBackbone,
    "gru": GRUBackbone,
    "rnn": RNNBackbone,
    "peephole": PeepholeBackbone,
    "coupled": CoupledBackbone,
}


def build_backbone(variant: str, input_size: int, hidden_size: int, num_layers: int = 1,
                   dropout: float = 0.0, bidirectional: bool = False) -> Backbone:
    """The backbone named `variant`; values are range-checked by the config schema, not here.

    Args:
        variant: a key of BACKBONES (model.name, or model.cell for seq2seq).
        input_size: features per input step.
        hidden_size: units per layer and direction.
        num_layers: stacked layers; each reads the previous layer's outputs.
        dropout: dropout between stacked layers (none after the last, none with one layer).
        bidirectional: also run each layer backwards in time.
    """
    if variant not in BACKBONES:
        # model.name, or model.cell for seq2seq: the message names the value, not the key
        raise ConfigError(f"backbone {variant!r}: unknown variant; "
                          f"choose one of {', '.join(sorted(BACKBONES))}")
    return BACKBONES[variant](input_size, hidden_size, num_layers=num_layers, dropout=dropout,
                              bidirectional=bidirectional)
