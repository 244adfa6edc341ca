"""Interval and distribution scores on the raw scale: pinball, CRPS, coverage, width, and the
empirical and conformal intervals that give them a reference.

Plain numpy over flat arrays (one value per scored target), so each score is checked against
hand-computed values (tests/test_probabilistic.py); pipeline.evaluate chooses the windows.

Naming: a level q is `q0.1`; a symmetric pair (lo, 1 - lo) is its nominal coverage in percent,
`80` for (0.1, 0.9). Metric keys: coverage_80, width_80, pinball_q0.1, crps, coverage_error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from pipeline.models.distributions import DENSE_LEVELS

QUANTILE_COLUMN = "y_q"  # predictions frames carry quantile columns y_q0.1, y_q0.5, ...
_COVERAGE_KEY = re.compile(r"^test/(?:(persistence|conformal)_)?coverage_(\d+(?:\.\d+)?)$")


def level_label(level: float) -> str:
    """0.1 -> 'q0.1': how columns and metrics name a quantile level."""
    return f"q{float(level):g}"


def quantile_column(level: float) -> str:
    return f"y_{level_label(level)}"


def quantile_columns(frame) -> dict[float, str]:
    """The quantile columns of a predictions frame, by level (empty for a point forecast)."""
    found = {}
    for column in frame.columns:
        if str(column).startswith(QUANTILE_COLUMN):
            found[float(str(column)[len(QUANTILE_COLUMN):])] = column
    return dict(sorted(found.items()))


def symmetric_pairs(levels: Sequence[float]) -> list[tuple[float, float]]:
    """(lo, hi) pairs of levels with hi = 1 - lo: the central intervals the levels define."""
    levels = sorted(float(q) for q in levels)
    pairs = []
    for lo in levels:
        if lo >= 0.5:
            break
        hi = next((q for q in levels if abs(q - (1 - lo)) < 1e-9), None)
        if hi is not None:
            pairs.append((lo, hi))
    return pairs


def interval_label(lo: float, hi: float) -> str:
    """(0.1, 0.9) -> '80': the interval's nominal coverage in percent."""
    return f"{round((hi - lo) * 100, 6):g}"


def pinball(y: np.ndarray, quantile: np.ndarray, level: float) -> np.ndarray:
    """Per-value pinball loss of the `level` quantile forecast: level * e above, (level - 1) * e
    below, where e = y - quantile."""
    error = np.asarray(y, dtype=np.float64) - np.asarray(quantile, dtype=np.float64)
    return np.maximum(level * error, (level - 1) * error)


def crps_from_quantiles(y: np.ndarray, quantiles: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Per-value CRPS approximated from quantiles (N, L) at `levels`: 2 x the mean pinball loss
    over the levels (CRPS = 2 x the integral of the pinball loss over all levels)."""
    quantiles = np.asarray(quantiles, dtype=np.float64)
    losses = [pinball(y, quantiles[:, i], level) for i, level in enumerate(levels)]
    return 2.0 * np.mean(losses, axis=0)


def crps_gaussian(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per-value closed-form CRPS of N(mu, sigma^2): sigma * (z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))."""
    from scipy.stats import norm

    sigma = np.asarray(sigma, dtype=np.float64)
    z = (np.asarray(y, dtype=np.float64) - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def crps_student_t(y: np.ndarray, mu: np.ndarray, sigma: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Per-value CRPS of a scaled Student-t, numerically: the quantile formula on DENSE_LEVELS
    (the midpoint rule for the integral over levels)."""
    from scipy.stats import t as student_t

    levels = np.asarray(DENSE_LEVELS)
    grid = student_t.ppf(levels[None, :], np.asarray(df, dtype=np.float64)[:, None])
    quantiles = np.asarray(mu, dtype=np.float64)[:, None] + np.asarray(sigma)[:, None] * grid
    return crps_from_quantiles(y, quantiles, levels)


def interval_scores(y: np.ndarray, quantiles: np.ndarray, levels: Sequence[float],
                    crps: np.ndarray | None = None) -> dict[str, float]:
    """Scores of quantile forecasts (N, L) at `levels` against truth y (N,):

    coverage_<p> (share of y inside [lo, hi]) and width_<p> (mean hi - lo) per symmetric pair,
    pinball_q<level> per level, crps (the per-value `crps` given, else from the quantiles) and
    coverage_error (mean |coverage - nominal| over the pairs; absent without pairs).
    """
    y = np.asarray(y, dtype=np.float64)
    quantiles = np.asarray(quantiles, dtype=np.float64)
    if len(y) == 0:
        return {}
    column = {float(level): i for i, level in enumerate(levels)}
    scores: dict[str, float] = {}
    errors = []
    for lo, hi in symmetric_pairs(levels):
        lower, upper = quantiles[:, column[lo]], quantiles[:, column[hi]]
        coverage = float(np.mean((y >= lower) & (y <= upper)))
        label = interval_label(lo, hi)
        scores[f"coverage_{label}"] = coverage
        scores[f"width_{label}"] = float(np.mean(upper - lower))
        errors.append(abs(coverage - (hi - lo)))
    for i, level in enumerate(levels):
        scores[f"pinball_{level_label(level)}"] = float(np.mean(pinball(y, quantiles[:, i], level)))
    per_value = crps if crps is not None else crps_from_quantiles(y, quantiles, levels)
    scores["crps"] = float(np.mean(per_value))
    if errors:
        scores["coverage_error"] = float(np.mean(errors))
    return scores


def empirical_quantiles(residuals: np.ndarray, levels: Sequence[float]) -> np.ndarray:
    """Quantiles (L,) of residuals (N,) at levels (NaN where there are no residuals)."""
    residuals = np.asarray(residuals, dtype=np.float64)
    residuals = residuals[~np.isnan(residuals)]
    if len(residuals) == 0:
        return np.full(len(levels), np.nan)
    return np.quantile(residuals, np.asarray(levels, dtype=np.float64))


def conformal_offset(y: np.ndarray, lower: np.ndarray, upper: np.ndarray, nominal: float) -> float:
    """Split-conformal (CQR) correction of an interval from n calibration values: the k-th
    smallest of max(lower - y, y - upper), k = ceil((n + 1) * nominal). Widening by it (narrowing,
    when negative) covers a new value with probability >= nominal if the values are
    exchangeable; with k > n (too few values) the largest stands in for an unbounded one."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return 0.0
    scores = np.sort(np.maximum(np.asarray(lower) - y, y - np.asarray(upper)))
    k = min(len(y), math.ceil((len(y) + 1) * nominal - 1e-9))  # 1e-9: 11 * 0.8 is 8.8000000001
    return float(scores[k - 1])


def conformal_scores(y: np.ndarray, quantiles: np.ndarray, levels: Sequence[float],
                     offsets: Mapping[tuple[float, float], np.ndarray]) -> dict[str, float]:
    """coverage_<p>, width_<p> and coverage_error of the conformally adjusted intervals: pair
    (lo, hi) widened by offsets[(lo, hi)] (one per value, e.g. by horizon step and target)."""
    y = np.asarray(y, dtype=np.float64)
    if len(y) == 0:
        return {}
    column = {float(level): i for i, level in enumerate(levels)}
    scores, errors = {}, []
    for (lo, hi), offset in offsets.items():
        lower = quantiles[:, column[lo]] - offset
        upper = np.maximum(quantiles[:, column[hi]] + offset, lower)  # a narrowed interval stays one
        coverage = float(np.mean((y >= lower) & (y <= upper)))
        label = interval_label(lo, hi)
        scores[f"coverage_{label}"] = coverage
        scores[f"width_{label}"] = float(np.mean(upper - lower))
        errors.append(abs(coverage - (hi - lo)))
    if errors:
        scores["coverage_error"] = float(np.mean(errors))
    return scores


def calibration_curves(metrics: Mapping[str, float]) -> dict[str, dict[float, float]]:
    """From test metrics: method ('model', 'persistence', 'conformal') -> {nominal: observed
    coverage}, the points of a calibration plot."""
    curves: dict[str, dict[float, float]] = {}
    for key, value in metrics.items():
        match = _COVERAGE_KEY.match(key)
        if match:
            method = match.group(1) or "model"
            curves.setdefault(method, {})[float(match.group(2)) / 100] = float(value)
    return {method: dict(sorted(points.items())) for method, points in curves.items()}
