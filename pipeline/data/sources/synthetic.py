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
