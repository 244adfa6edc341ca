"""Encoder-decoder for multi-step horizons, over any registered recurrent cell.

The encoder reads the window; its final state seeds a decoder that emits one step at a time,
fed either the true previous value (teacher forcing, training only, per sample with probability
`teacher_forcing`) or its own previous prediction (always at validation and test).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import build_backbone

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class Seq2SeqDecoder(nn.Module):
    def __init__(self, cell: str, n_targets: int, hidden_size: int, num_layers: int,
                 dropout: float, encoder_directions: int) -> None:
        super().__init__()
        self.cell = build_backbone(cell, n_targets, hidden_size, num_layers, dropout, False)
        self.num_layers, self.hidden_size = num_layers, hidden_size
        # A bidirectional encoder's two final states per layer are merged into one decoder state.
        self.bridge = nn.Linear(2 * hidden_size, hidden_size) if encoder_directions == 2 else None
        self.proj = nn.Linear(hidden_size, n_targets)

    def _merge(self, state: torch.Tensor) -> torch.Tensor:
        if self.bridge is None:
            return state
        batch = state.shape[1]
        both = state.view(self.num_layers, 2, batch, self.hidden_size).permute(0, 2, 1, 3)
        return torch.tanh(self.bridge(both.reshape(self.num_layers, batch, 2 * self.hidden_size)))

    def bridge_state(self, state: State) -> State:
        if isinstance(state, tuple):
            return tuple(self._merge(s).contiguous() for s in state)
        return self._merge(state).contiguous()

    def forward(self, state: State, first_input: torch.Tensor, horizon: int,
                teacher: torch.Tensor | None = None, teacher_forcing: float = 0.0) -> torch.Tensor:
        """first_input: (batch, targets) last observed values; returns (batch, horizon, targets)."""
        state = self.bridge_state(state)
        step_input = first_input[:, None, :]
        outputs = []
        for step in range(horizon):
            out, state = self.cell(step_input, state)
            prediction = self.proj(out)
            outputs.append(prediction)
            step_input = prediction
            if teacher is not None and teacher_forcing > 0:
                forced = torch.rand(len(prediction), 1, 1, device=prediction.device) < teacher_forcing
                step_input = torch.where(forced, teacher[:, step:step + 1], prediction)
        return torch.cat(outputs, dim=1)
