"""Encoder-decoder for multi-step horizons, over any backbone of the table.

The encoder reads the window; its final state seeds a decoder that emits one step at a time,
fed either the true previous value (teacher forcing, training only, per sample with probability
`teacher_forcing`) or its own previous point forecast (always at validation and test): with a
distribution head, the median of the step's distribution.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.backbones import State, build_backbone
from pipeline.models.distributions import DistributionLayer


class Seq2SeqDecoder(nn.Module):
    """A unidirectional stacked backbone of the encoder's variant, unrolled one step at a time.

    Args:
        variant: the backbone variant of encoder and decoder (model.cell).
        n_targets: values fed in and predicted per step.
        hidden_size: units per layer; the same as the encoder's, whose final state it starts from.
        num_layers: stacked layers, as many as the encoder's.
        dropout: dropout between stacked layers.
        encoder_directions: 2 when the encoder is bidirectional; its two final states per layer
            are then merged into one through a learned bridge.
        horizon: future steps decoded.
        distribution: the output layer of each step (default: a point forecast).
    """

    def __init__(self, variant: str, n_targets: int, hidden_size: int, num_layers: int,
                 dropout: float, encoder_directions: int, horizon: int,
                 distribution: DistributionLayer | None = None) -> None:
        super().__init__()
        self.backbone = build_backbone(variant, n_targets, hidden_size, num_layers, dropout,
                                       bidirectional=False)
        self.num_layers, self.hidden_size, self.horizon = num_layers, hidden_size, horizon
        self.bridge = nn.Linear(2 * hidden_size, hidden_size) if encoder_directions == 2 else None
        self.distribution = distribution or DistributionLayer()
        self.proj = nn.Linear(hidden_size, n_targets * self.distribution.channels)

    def _merge(self, state: torch.Tensor) -> torch.Tensor:
        # (layers * 2, batch, hidden) -> (layers, batch, 2 * hidden) -> (layers, batch, hidden)
        if self.bridge is None:
            return state
        batch = state.shape[1]
        both = state.view(self.num_layers, 2, batch, self.hidden_size).permute(0, 2, 1, 3)
        return torch.tanh(self.bridge(both.reshape(self.num_layers, batch, 2 * self.hidden_size)))

    def bridge_state(self, state: State) -> State:
        if isinstance(state, tuple):
            return tuple(self._merge(s).contiguous() for s in state)
        return self._merge(state).contiguous()

    def forward(self, state: State, first_input: torch.Tensor,
                teacher: torch.Tensor | None = None, teacher_forcing: float = 0.0) -> torch.Tensor:
        """The encoder's final state and first_input (batch, n_targets), the last observed
        values, -> (batch, horizon, n_targets) (point) or (batch, horizon, n_targets, channels)
        distribution parameters; teacher (batch, horizon, n_targets) is the truth fed back with
        probability teacher_forcing."""
        state = self.bridge_state(state)
        step_input = first_input[:, None, :]  # (batch, 1, n_targets)
        outputs = []
        for step in range(self.horizon):
            out, state = self.backbone(step_input, state)
            params = self.distribution(self.proj(out))  # (batch, 1, n_targets[, channels])
            outputs.append(params)
            prediction = self.distribution.median(params)  # (batch, 1, n_targets)
            step_input = prediction
            if teacher is not None and teacher_forcing > 0:
                forced = torch.rand(len(prediction), 1, 1, device=prediction.device) < teacher_forcing
                step_input = torch.where(forced, teacher[:, step:step + 1], prediction)
        return torch.cat(outputs, dim=1)
