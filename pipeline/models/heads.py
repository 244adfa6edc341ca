"""Heads map backbone outputs (batch, time, features) to targets (batch, steps, n_targets)."""

from __future__ import annotations

import torch
from torch import nn


def last_hidden(outputs: torch.Tensor, num_directions: int) -> torch.Tensor:
    """Summary of a window: the forward direction's last step and, if bidirectional,
    the reverse direction's last step (which sits at t=0)."""
    if num_directions == 1:
        return outputs[:, -1]
    hidden = outputs.shape[-1] // 2
    return torch.cat([outputs[:, -1, :hidden], outputs[:, 0, hidden:]], dim=-1)


class SequenceHead(nn.Module):
    """Many-to-many: one prediction per input step."""

    def __init__(self, in_features: int, n_targets: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, n_targets)

    def forward(self, outputs: torch.Tensor, num_directions: int) -> torch.Tensor:
        return self.proj(outputs)


class ForecastHead(nn.Module):
    """Many-to-one / direct multi-step: `horizon` future values from the window summary."""

    def __init__(self, in_features: int, n_targets: int, horizon: int) -> None:
        super().__init__()
        self.horizon, self.n_targets = horizon, n_targets
        self.proj = nn.Linear(in_features, horizon * n_targets)

    def forward(self, outputs: torch.Tensor, num_directions: int) -> torch.Tensor:
        summary = last_hidden(outputs, num_directions)
        return self.proj(summary).view(-1, self.horizon, self.n_targets)


def build_head(mode: str, in_features: int, n_targets: int, horizon: int) -> nn.Module:
    if mode == "sequence":
        return SequenceHead(in_features, n_targets)
    return ForecastHead(in_features, n_targets, horizon)
