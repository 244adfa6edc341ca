"""data.layout=universe: a data config -> the long frame of its source -> a prepared universe.

    universe_synthetic  correlated random walks, generated from a seed (offline, any size)
    universe_file       a long CSV or Parquet file: date, series, value columns
    universe_stock      daily bars of many codes (or an index's members), cached per code

The frame is read whole, then pipeline.data.universe splits it by date, drops short series,
fits per-series scalers and indexes the windows. The digest names the frame the windows were
cut from (the data the run saw), as a single series' digest does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from pipeline.config import DataConfig
from pipeline.data.digest import frame_digest
from pipeline.data.universe import (
    UniverseData,
    prepare_universe,
    read_long_frame,
    synthetic_universe,
)
from pipeline.data.windowing import WindowSpec
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class UniverseFrame:
    frame: pd.DataFrame
    label: str
    failed: dict[str, str] = field(default_factory=dict)  # codes a fetch could not deliver
    path: Path | None = None  # the file it came from, if one


def read_universe(data: DataConfig) -> UniverseFrame:
    """The long frame of a universe source, as the source gives it (prepare_universe checks it)."""
    p = data.params
    if data.source == "universe_synthetic":
        frame = synthetic_universe(p["n_series"], p["days"], p["seed"], correlation=p["correlation"],
                                   regimes=p["regimes"], start=p["start"])
        return UniverseFrame(frame, f"universe_synthetic ({p['n_series']} series x {p['days']} days)")
    if data.source == "universe_file":
        path = Path(p["path"]).expanduser()
        return UniverseFrame(read_long_frame(path, data.date_format), f"universe_file {path}",
                             path=path)
    if data.source == "universe_stock":
        # Lazy: the stock path pulls in tushare's and baostock's clients only when used.
        from pipeline.data.sources.universe_stock import load_stock_universe

        fetched = load_stock_universe(p, data.cache_dir, offline=data.offline,
                                      refresh=data.refresh, progress=True)
        return UniverseFrame(fetched.frame, f"universe_stock ({len(fetched.fetched)} codes)",
                             failed=dict(fetched.failed))
    raise ConfigError(f"data.source={data.source!r} is not a universe source")


def prepare_universe_data(data: DataConfig, spec: WindowSpec) -> UniverseData:
    """Config -> the prepared universe, named by its digest and source."""
    read = read_universe(data)
    split = dict(vars(data.split))
    universe = prepare_universe(read.frame, data.inputs, data.targets, spec, split, data.scaler,
                                min_windows=data.min_windows,
                                target_transform=data.target_transform)
    return replace(universe, digest=frame_digest(universe.frame), source=data.source,
                   label=read.label, failed=read.failed, cache_path=read.path)
