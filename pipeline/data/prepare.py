"""A validated frame -> scaled windows per split (what the DataModule serves and evaluation reads).

Two layouts, one result (PreparedData):

- series: one long series, split chronologically (fractions or dates), windows cut inside each
  split so no sample crosses a boundary;
- samples: independent fixed-length samples (toy, binary_add), split by their own `split` label.

Either way the scalers are fit on training rows only: validation and test values never leak
into the scaling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.loading import FetchResult
from pipeline.data.scaling import AffineScaler
from pipeline.data.transforms import changes, first_non_positive
from pipeline.data.windowing import (
    SPLITS,
    Windows,
    WindowSpec,
    check_split_lengths,
    make_windows,
    series_split_bounds,
)
from pipeline.errors import ConfigError, DataError, require


@dataclass(frozen=True)
class PreparedData:
    """Scaled windows per split, plus what is needed to undo the scaling and place targets in time.

    `bounds` are [start, stop) frame rows per split; for samples, the first and last row of the
    split's samples (a split's samples need not be contiguous, and val may reuse test samples).
    """

    windows: dict[str, Windows]
    bounds: dict[str, tuple[int, int]]
    x_scaler: AffineScaler
    y_scaler: AffineScaler
    inputs: list[str]
    targets: list[str]
    spec: WindowSpec
    frame: pd.DataFrame
    digest: str
    source: str
    layout: str = "series"
    cache_path: Path | None = None  # the cached Parquet file the data came from, if any
    # none | log_return | diff: windows' y (and y_scaler) hold the targets' changes; the frame
    # keeps the levels (pipeline.data.transforms).
    target_transform: str = "none"


def prepare_series(
    fetched: FetchResult,
    inputs: list[str],
    targets: list[str],
    spec: WindowSpec,
    split: Mapping[str, Any],
    scaler: str = "standard",
    target_transform: str = "none",
) -> PreparedData:
    """Split one series chronologically, fit scalers on the train rows only, window each split.

    `split`: fractions {train, val, test} or dates {train_end, val_end}. Windows are cut inside
    each split, so no sample's inputs or targets cross a boundary. With a target_transform the
    targets become changes from the previous row (a window's first target follows its last
    input row, so every change it holds is observed).
    """
    frame = fetched.frame
    bounds = series_split_bounds(frame.index, dict(split))
    check_split_lengths(bounds, spec, fetched.label)
    x_raw = frame[inputs].to_numpy(dtype=np.float64)
    y_raw = target_values(frame, targets, target_transform, fetched.label)
    train_start, train_stop = bounds["train"]
    x_scaler = AffineScaler.fit(scaler, x_raw[train_start:train_stop])
    # The first row has no change; it is never a window's target, and the scaler skips it.
    y_scaler = AffineScaler.fit(scaler, y_raw[max(train_start, int(target_transform != "none")):train_stop])
    x_all, y_all = x_scaler.transform(x_raw), y_scaler.transform(y_raw)
    windows = {
        name: make_windows(x_all[start:stop], y_all[start:stop], spec, first_row=start)
        for name, (start, stop) in bounds.items()
    }
    return PreparedData(windows=windows, bounds=bounds, x_scaler=x_scaler, y_scaler=y_scaler,
                        inputs=list(inputs), targets=list(targets), spec=spec, frame=frame,
                        digest=fetched.digest, source=fetched.source, cache_path=fetched.cache_path,
                        target_transform=target_transform)


def target_values(frame: pd.DataFrame, targets: list[str], kind: str, label: str) -> np.ndarray:
    """The target columns as the model learns them: levels, or their changes (see transforms)."""
    levels = frame[targets].to_numpy(dtype=np.float64)
    if kind == "log_return":
        bad = first_non_positive(levels)
        if bad is not None:
            row, column = bad
            raise DataError(f"{label}: data.target_transform=log_return needs prices > 0; column "
                            f"{targets[column]!r} is {levels[row, column]!r} at {frame.index[row]}; "
                            "use data.target_transform=diff")
    return changes(levels, kind)


def prepare_samples(
    fetched: FetchResult,
    inputs: list[str],
    targets: list[str],
    spec: WindowSpec,
    split: Mapping[str, Any],
    scaler: str = "standard",
) -> PreparedData:
    """One window per sample: x (N, steps, F); y (N, steps, T) in sequence mode, or the last
    `horizon` steps (N, horizon, T) in forecast mode; rows index the targets in the frame.

    `split` maps each split to the sample labels it takes, e.g. {train: train, val: test, test: test}.
    The frame is one row per (sample, step), sorted, as validation leaves it.
    """
    frame = fetched.frame
    steps = int(frame["step"].max()) + 1
    n_samples = len(frame) // steps
    require(spec.lookback == steps, "data.lookback", spec.lookback,
            f"must equal the {steps} steps of every {fetched.label} sample")
    require(spec.mode == "sequence" or spec.horizon <= steps, "data.horizon", spec.horizon,
            f"must be at most the {steps} steps of a sample")
    targeted = slice(0, steps) if spec.mode == "sequence" else slice(steps - spec.horizon, steps)
    x_raw = frame[inputs].to_numpy(dtype=np.float64).reshape(n_samples, steps, len(inputs))
    y_raw = frame[targets].to_numpy(dtype=np.float64).reshape(n_samples, steps, len(targets))[:, targeted]
    rows = np.arange(len(frame), dtype=np.int64).reshape(n_samples, steps)[:, targeted]
    masks = sample_masks(frame["split"].to_numpy()[::steps], split, fetched.label)

    train = masks["train"]
    x_scaler = AffineScaler.fit(scaler, x_raw[train].reshape(-1, len(inputs)))
    y_scaler = AffineScaler.fit(scaler, y_raw[train].reshape(-1, len(targets)))
    windows = {name: Windows(x=x_scaler.transform(x_raw[mask]), y=y_scaler.transform(y_raw[mask]),
                             rows=rows[mask])
               for name, mask in masks.items()}
    bounds = {name: (int(w.rows.min()), int(w.rows.max()) + 1) for name, w in windows.items()}
    return PreparedData(windows=windows, bounds=bounds, x_scaler=x_scaler, y_scaler=y_scaler,
                        inputs=list(inputs), targets=list(targets), spec=spec, frame=frame,
                        digest=fetched.digest, source=fetched.source, layout="samples",
                        cache_path=fetched.cache_path)


def sample_masks(labels: np.ndarray, split: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
    """Which samples each split takes, from data.split's label(s) per split."""
    masks = {}
    for name in SPLITS:
        chosen = _labels(split, name)
        masks[name] = np.isin(labels, chosen)
        if not masks[name].any():
            raise DataError(f"{source}: no sample is labelled {', '.join(map(repr, chosen))} for the "
                            f"{name} split; labels present: {', '.join(sorted(map(str, set(labels))))}")
    return masks


def _labels(split: Mapping[str, Any], name: str) -> list[str]:
    value = split.get(name, name)
    labels = [value] if isinstance(value, str) else list(value) if isinstance(value, Sequence) else None
    if labels is None or not labels or not all(isinstance(v, str) for v in labels):
        raise ConfigError(f"data.split.{name}={value!r}: with layout=samples each split names the "
                          "sample labels it takes, e.g. {train: train, val: val, test: test}")
    return labels
