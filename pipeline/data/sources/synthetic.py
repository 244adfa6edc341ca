"""Synthetic series generated offline from a seed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.sources import source


@source("sine")
def sine_cosine(params: Mapping[str, Any]) -> pd.DataFrame:
    """Input sin(t), target cos(t), t over 0..2π·periods (default 12π); `noise` and
    `target_noise` add gaussian noise of that sd to the input and the target.

    Equal sine values map to different cosines (rising vs falling), so a model must use context.
    """
    points, periods, noise = params["points"], params["periods"], params["noise"]
    t = np.linspace(0.0, 2 * np.pi * periods, points)
    rng = np.random.default_rng(params["seed"])
    sin = np.sin(t) + noise * rng.standard_normal(points)
    # Drawn after the input noise, so a series without target noise is the one it always was.
    cos = np.cos(t) + params.get("target_noise", 0.0) * rng.standard_normal(points)
    return pd.DataFrame({"sin": sin, "cos": cos}, index=pd.Index(t, name="t"))


@source("sst_synthetic")
def synthetic_sst(params: Mapping[str, Any]) -> pd.DataFrame:
    """Monthly sea surface temperatures for several regions, one column each.

    Each region: its mean + an annual cycle peaking in `peak_month` + its `enso` loading times one
    shared slow oscillation (two incommensurate periods, so no two cycles repeat exactly), shifted
    by `lag` months + AR(1) noise. The shared oscillation is what makes regions informative about
    each other, as El Niño is in real data.
    """
    months, regions, phi = params["months"], params["regions"], params["ar_coefficient"]
    rng = np.random.default_rng(params["seed"])
    t = np.arange(months, dtype=np.float64)
    columns = {}
    for name, region in regions.items():
        lagged = t - region["lag"]
        columns[name] = (region["mean"]
                         + region["annual"] * np.cos(2 * np.pi * (t - region["peak_month"]) / 12)
                         + region["enso"] * _enso_index(lagged, params)
                         + _ar1_noise(rng, months, phi, params["noise"]))
    index = pd.date_range(params["start"], periods=months, freq="MS", name="date")
    return pd.DataFrame(columns, index=index)


def _enso_index(t: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    periods = [12 * years for years in params["enso_periods_years"]]
    return params["enso_amplitude"] * np.mean([np.sin(2 * np.pi * t / p) for p in periods], axis=0)


def _ar1_noise(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    """x[t] = phi * x[t-1] + e[t], started from its stationary distribution."""
    shocks = sigma * rng.standard_normal(n)
    noise = np.empty(n)
    noise[0] = shocks[0] / np.sqrt(1 - phi**2)
    for t in range(1, n):  # a recursion: each value needs the previous one (n is ~1000)
        noise[t] = phi * noise[t - 1] + shocks[t]
    return noise
