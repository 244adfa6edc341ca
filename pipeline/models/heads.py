"""Heads map backbone outputs (batch, time, features) to forecasts: (batch, steps, n_targets) for
a point head, (batch, steps, n_targets, channels) distribution parameters for the others (see
pipeline.models.distributions)."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.distributions import DistributionLayer


def last_hidden(outputs: torch.Tensor, num_directions: int) -> torch.Tensor:
    """Summary of a window, (batch, time, features) -> (batch, features): the forward direction's
    last step and, if bidirectional, the reverse direction's last step (which sits at t=0)."""
    if num_directions == 1:
        return outputs[:, -1]
    hidden = outputs.shape[-1] // 2
    return torch.cat([outputs[:, -1, :hidden], outputs[:, 0, hidden:]], dim=-1)


class SequenceHead(nn.Module):
    """Many-to-many: one prediction per input step.

    Args:
        in_features: features per step of the backbone's outputs.
        n_targets: values predicted per step.
        distribution: the output layer (default: a point forecast).
    """

    def __init__(self, in_features: int, n_targets: int,
                 distribution: DistributionLayer | None = None) -> None:
        super().__init__()
        self.distribution = distribution or DistributionLayer()
        self.proj = nn.Linear(in_features, n_targets * self.distribution.channels)

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        # (batch, time, in_features) -> (batch, time, n_targets * channels) -> parameters
        return self.distribution(self.proj(outputs))


class ForecastHead(nn.Module):
    """Many-to-one / direct multi-step: `horizon` future values from the window summary.

    Args:
        in_features: features per step of the backbone's outputs.
        num_directions: the backbone's directions; a bidirectional summary takes the reverse
            direction's features from t=0, where that direction has read the whole window.
        n_targets: values predicted per horizon step.
        horizon: future steps predicted at once.
        distribution: the output layer (default: a point forecast).
    """

    def __init__(self, in_features: int, num_directions: int, n_targets: int,
                 horizon: int, distribution: DistributionLayer | None = None) -> None:
        super().__init__()
        self.num_directions, self.horizon, self.n_targets = num_directions, horizon, n_targets
        self.distribution = distribution or DistributionLayer()
        self.proj = nn.Linear(in_features, horizon * n_targets * self.distribution.channels)

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        # (batch, time, in_features) -> (batch, in_features) -> (batch, horizon, n_targets * channels)
        summary = last_hidden(outputs, self.num_directions)
        raw = self.proj(summary).view(-1, self.horizon, self.n_targets * self.distribution.channels)
        return self.distribution(raw)
