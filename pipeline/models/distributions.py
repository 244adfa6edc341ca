"""The distribution output layer every head ends with: raw network values -> forecast parameters.

A head emits `targets * channels` values per step; this layer turns them into the parameters of
the forecast distribution of each target, in scaled space, with the constraints built in:

- point: one channel, the forecast itself (what every head emitted before heads existed);
- quantile: one channel per level, monotone by construction: the median channel is free and the
  others are cumulative softplus increments outward from it, so quantiles never cross;
- gaussian: (mu, sigma), sigma = softplus + a floor;
- student_t: (mu, sigma, df), df = 2 + softplus (a finite variance: df > 2).

It imports torch alone (scipy lazily, for Student-t quantiles), so the pyfunc model loads it
without Lightning or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

HEADS = ("point", "quantile", "gaussian", "student_t")
DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
# The smallest scale a distribution head may predict (scaled units): keeps the NLL finite.
SIGMA_FLOOR = 1e-4
# Levels at which a distribution is read when its CRPS has no closed form: the midpoints of 200
# equal slices of (0, 1), so 2 * mean pinball over them is the midpoint rule for CRPS's integral.
DENSE_LEVELS = tuple((i + 0.5) / 200 for i in range(200))


def head_channels(head: str, quantiles: Sequence[float]) -> int:
    """Values a head emits per target and step."""
    if head == "point":
        return 1
    if head == "quantile":
        return len(quantiles)
    if head == "gaussian":
        return 2
    if head == "student_t":
        return 3
    raise ValueError(f"unknown head {head!r}: choose one of {', '.join(HEADS)}")


def pinball_loss(pred: torch.Tensor, y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean quantile (pinball) loss: pred (..., L) quantiles at `levels` (L,), y (...) truth.

    For level q and error e = y - pred: q * e when the truth is above, (q - 1) * e below.
    """
    error = y.unsqueeze(-1) - pred
    return torch.maximum(levels * error, (levels - 1) * error).mean()


def _median_index(levels: Sequence[float]) -> int:
    for index, level in enumerate(levels):
        if abs(level - 0.5) < 1e-9:
            return index
    raise ValueError(f"quantile levels {list(levels)} must include 0.5: the median is the point forecast")


def _normal_icdf(levels: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0) * torch.erfinv(2 * levels - 1)


class DistributionLayer(nn.Module):
    """Raw head values (..., targets * channels) -> parameters in scaled space.

    point: (..., targets); every other head: (..., targets, channels), where the channels are the
    quantiles at `quantiles` (quantile head), (mu, sigma) (gaussian) or (mu, sigma, df)
    (student_t). No parameters of its own: state dicts of heads without it still load.

    Args:
        head: one of HEADS.
        quantiles: the levels a quantile head predicts, strictly increasing, with 0.5 among them
            (pipeline.config checks this); the other heads ignore them.
    """

    def __init__(self, head: str = "point", quantiles: Sequence[float] = DEFAULT_QUANTILES) -> None:
        super().__init__()
        self.head = head
        self.levels = tuple(float(q) for q in quantiles)
        self.channels = head_channels(head, self.levels)
        # A plain attribute, not a buffer: state dicts stay what they were before heads existed.
        self._median_index = _median_index(self.levels) if head == "quantile" else 0

    @property
    def is_point(self) -> bool:
        return self.head == "point"

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        if self.is_point:
            return raw
        params = raw.unflatten(-1, (-1, self.channels))  # (..., targets, channels)
        if self.head == "quantile":
            return self._monotone(params)
        mu = params[..., 0]
        sigma = F.softplus(params[..., 1]) + SIGMA_FLOOR
        if self.head == "gaussian":
            return torch.stack([mu, sigma], dim=-1)
        df = 2.0 + F.softplus(params[..., 2]) + 1e-3
        return torch.stack([mu, sigma, df], dim=-1)

    def _monotone(self, raw: torch.Tensor) -> torch.Tensor:
        # The median is free; each level above adds a non-negative step to the one below it,
        # each level below subtracts one from the one above: crossing is impossible.
        m = self._median_index
        median = raw[..., m:m + 1]
        above = median + torch.cumsum(F.softplus(raw[..., m + 1:]), dim=-1)
        below = median - torch.cumsum(F.softplus(raw[..., :m]).flip(-1), dim=-1).flip(-1)
        return torch.cat([below, median, above], dim=-1)

    def median(self, params: torch.Tensor) -> torch.Tensor:
        """The point forecast (..., targets): the median of every head's distribution."""
        if self.is_point:
            return params
        if self.head == "quantile":
            return params[..., self._median_index]
        return params[..., 0]  # gaussian and student_t are symmetric about mu

    def loss(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The head's training loss against scaled truth y (..., targets): pinball for quantiles,
        negative log-likelihood for gaussian and student_t (MSE for point)."""
        if self.is_point:
            return F.mse_loss(params, y)
        if self.head == "quantile":
            levels = params.new_tensor(self.levels)
            return pinball_loss(params, y, levels)
        return -self.distribution(params).log_prob(y).mean()

    def distribution(self, params: torch.Tensor) -> torch.distributions.Distribution:
        if self.head == "gaussian":
            return torch.distributions.Normal(params[..., 0], params[..., 1])
        if self.head == "student_t":
            return torch.distributions.StudentT(params[..., 2], params[..., 0], params[..., 1])
        raise ValueError(f"the {self.head} head has no parametric distribution")

    def quantiles(self, params: torch.Tensor, levels: Sequence[float]) -> torch.Tensor:
        """Quantiles (..., targets, len(levels)) at `levels`, in scaled space.

        A quantile head interpolates linearly between its own levels and refuses levels outside
        them (it knows nothing of its tails); gaussian is exact; student_t reads scipy's t.ppf.
        """
        if self.is_point:
            raise ValueError("a point head has no quantiles: train with model.head=quantile, "
                             "gaussian or student_t")
        wanted = params.new_tensor([float(q) for q in levels])
        if self.head == "quantile":
            return self._interpolated(params, wanted)
        mu, sigma = params[..., 0:1], params[..., 1:2]
        if self.head == "gaussian":
            return mu + sigma * _normal_icdf(wanted)
        return mu + sigma * _student_t_icdf(wanted, params[..., 2:3])

    def _interpolated(self, params: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        known = params.new_tensor(self.levels)
        if bool((wanted < known[0] - 1e-9).any() or (wanted > known[-1] + 1e-9).any()):
            raise ValueError(f"levels {wanted.tolist()} fall outside the quantile head's own "
                             f"levels [{self.levels[0]:g}, {self.levels[-1]:g}]")
        if len(self.levels) == 1:
            return params.expand(*params.shape[:-1], len(wanted))
        upper = torch.searchsorted(known, wanted.clamp(known[0], known[-1])).clamp(1, len(known) - 1)
        lower = upper - 1
        weight = (wanted - known[lower]) / (known[upper] - known[lower])
        # (1 - w) lo + w hi is exactly lo or hi at a known level; the running max keeps sorted
        # requests ordered where float rounding inside a near-empty gap would not.
        values = (1 - weight) * params[..., lower] + weight * params[..., upper]
        if bool((wanted.diff() >= 0).all()):
            values = torch.cummax(values, dim=-1).values
        return values


def _student_t_icdf(levels: torch.Tensor, df: torch.Tensor) -> torch.Tensor:
    """Standard Student-t quantiles, (..., 1) df against (L,) levels -> (..., L); not differentiable."""
    from scipy.stats import t as student_t  # lazy: only Student-t heads need scipy

    values = student_t.ppf(levels.detach().cpu().double().numpy(), df.detach().cpu().double().numpy())
    return torch.as_tensor(values, dtype=df.dtype, device=df.device)
