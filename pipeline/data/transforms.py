"""Target transforms for prices: the model learns changes, users read levels.

A price series wanders; its day-to-day changes are closer to stationary, so a model can learn
them across price regimes. `log_return` is log(p_t / p_{t-1}), `diff` is p_t - p_{t-1}. The
data stage turns the target columns into changes before scaling (changes() below); the network
turns predicted changes back into prices from the window's last observed price (to_levels()),
so every metric, plot, baseline and the pyfunc stay on the raw scale of prices.
"""

from __future__ import annotations

import numpy as np
import torch

TARGET_TRANSFORMS = ("none", "log_return", "diff")


def changes(levels: np.ndarray, kind: str) -> np.ndarray:
    """(rows, targets) levels -> the same shape of changes; the first row has none (NaN)."""
    levels = np.asarray(levels, dtype=np.float64)
    if kind == "none":
        return levels
    steps = np.log(levels) if kind == "log_return" else levels
    out = np.full_like(steps, np.nan)
    out[1:] = np.diff(steps, axis=0)
    return out


def to_levels(predicted: torch.Tensor, last: torch.Tensor, kind: str) -> torch.Tensor:
    """(batch, steps, targets[, k]) changes after the window + (batch, targets) last observed
    levels -> levels at each step: the changes accumulate over the horizon. A trailing axis
    (quantile levels) is mapped value by value; each step's value is monotone in its own change,
    so one-step quantiles map exactly (more steps are refused by the config check)."""
    if kind == "none":
        return predicted
    base = last[:, None, :] if predicted.dim() == 3 else last[:, None, :, None]
    total = torch.cumsum(predicted, dim=1)
    return base * torch.exp(total) if kind == "log_return" else base + total


def first_non_positive(levels: np.ndarray) -> tuple[int, int] | None:
    """(row, column) of the first level <= 0 (a log return needs positive prices), or None."""
    bad = np.argwhere(~(np.asarray(levels, dtype=np.float64) > 0))
    return None if len(bad) == 0 else (int(bad[0][0]), int(bad[0][1]))
