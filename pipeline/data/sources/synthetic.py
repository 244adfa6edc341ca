"""Synthetic series generated offline from a seed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.sources import source
from pipeline.errors import require


@source("sine")
def sine_cosine(params: Mapping[str, Any]) -> pd.DataFrame:
    """Input sin(t), target cos(t), t over 0..2π·periods (default 12π).

    Equal sine values map to different cosines (rising vs falling), so a model must use context.
    """
    points = params.get("points", 1000)
    periods = params.get("periods", 6)
    noise = params.get("noise", 0.0)
    require(isinstance(points, int) and points >= 10, "data.params.points", points, "must be an integer >= 10")
    require(periods > 0, "data.params.periods", periods, "must be positive")
    require(noise >= 0, "data.params.noise", noise, "must be >= 0")
    t = np.linspace(0.0, 2 * np.pi * periods, points)
    rng = np.random.default_rng(params.get("seed", 0))
    sin = np.sin(t) + noise * rng.standard_normal(points)
    return pd.DataFrame({"sin": sin, "cos": np.cos(t)}, index=pd.Index(t, name="t"))


@source("sst_synthetic")
def synthetic_sst(params: Mapping[str, Any]) -> pd.DataFrame:
    """Monthly sea surface temperatures for several regions, one column each.

    Each region: its mean + an annual cycle peaking in `peak_month` + its `enso` loading times one
    shared slow oscillation (two incommensurate periods, so no two cycles repeat exactly), shifted
    by `lag` months + AR(1) noise. The shared oscillation is what makes regions informative about
    each other, as El Niño is in real data.
    """
    months = params.get("months", 732)
    require(isinstance(months, int) and months >= 24, "data.params.months", months,
            "must be an integer >= 24")
    regions = dict(params.get("regions") or {})
    require(len(regions) > 0, "data.params.regions", regions, "must name at least one region")
    phi = params.get("ar_coefficient", 0.7)
    require(-1 < phi < 1, "data.params.ar_coefficient", phi, "must lie strictly between -1 and 1")
    rng = np.random.default_rng(params.get("seed", 0))
    t = np.arange(months, dtype=np.float64)
    columns = {}
    for name, region in regions.items():
        region = dict(region)
        lagged = t - region.get("lag", 0)
        columns[name] = (region.get("mean", 25.0)
                         + region.get("annual", 2.0) * np.cos(2 * np.pi * (t - region.get("peak_month", 2)) / 12)
                         + region.get("enso", 1.0) * _enso_index(lagged, params)
                         + _ar1_noise(rng, months, phi, params.get("noise", 0.3)))
    index = pd.date_range(params.get("start", "1950-01-01"), periods=months, freq="MS", name="date")
    return pd.DataFrame(columns, index=index)


def _enso_index(t: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    periods = [12 * years for years in params.get("enso_periods_years", [3.7, 5.3])]
    amplitude = params.get("enso_amplitude", 1.0)
    return amplitude * np.mean([np.sin(2 * np.pi * t / p) for p in periods], axis=0)


def _ar1_noise(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """x[t] = phi * x[t-1] + e[t], started from its stationary distribution."""
    shocks = sigma * rng.standard_normal(n)
    noise = np.empty(n)
    noise[0] = shocks[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):  # a recursion: each value needs the previous one (n is ~1000)
        noise[t] = phi * noise[t - 1] + shocks[t]
    return noise
