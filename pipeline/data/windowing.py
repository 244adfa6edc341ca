"""Sliding windows (as strided views, no Python loop over rows) and chronological splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.errors import DataError, require

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class WindowSpec:
    """How a series becomes samples.

    mode="sequence": many-to-many, a target per input step (sine -> cosine).
    mode="forecast": many-to-one / multi-step, the `horizon` values after the window.
    """

    lookback: int
    horizon: int = 1
    stride: int = 1
    mode: str = "forecast"

    @property
    def span(self) -> int:
        """Rows one sample covers (inputs plus future targets)."""
        return self.lookback if self.mode == "sequence" else self.lookback + self.horizon

    @property
    def target_steps(self) -> int:
        return self.lookback if self.mode == "sequence" else self.horizon


@dataclass(frozen=True)
class Windows:
    """x: (W, lookback, F); y: (W, target_steps, T); rows: (W, target_steps) row index of each target."""

    x: np.ndarray
    y: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


def _views(values: np.ndarray, span: int, stride: int) -> np.ndarray:
    """(N, C) -> (W, span, C) strided view; windows start at 0, stride, 2*stride, ..."""
    return sliding_window_view(values, span, axis=0)[::stride].transpose(0, 2, 1)


def make_windows(x: np.ndarray, y: np.ndarray, spec: WindowSpec, first_row: int = 0) -> Windows:
    """Cut aligned (x, y) rows of one contiguous segment into samples.

    `first_row` is the segment's offset in the full series, so `rows` index the original frame.
    """
    if len(x) < spec.span:
        return Windows(
            x=np.empty((0, spec.lookback, x.shape[1])),
            y=np.empty((0, spec.target_steps, y.shape[1])),
            rows=np.empty((0, spec.target_steps), dtype=np.int64),
        )
    row_index = np.arange(first_row, first_row + len(x), dtype=np.int64)[:, None]
    xs, ys, rows = (_views(a, spec.span, spec.stride) for a in (x, y, row_index))
    if spec.mode == "sequence":
        return Windows(x=xs, y=ys, rows=rows[..., 0])
    lb = spec.lookback
    return Windows(x=xs[:, :lb], y=ys[:, lb:], rows=rows[:, lb:, 0])


def split_bounds(n_rows: int, fractions: dict[str, float]) -> dict[str, tuple[int, int]]:
    """Chronological [start, stop) row ranges for train/val/test from fractions of the series
    (pipeline.config checked that they are fractions adding up to 1)."""
    n_train = int(round(n_rows * (fractions.get("train") or 0.0)))
    n_val = int(round(n_rows * (fractions.get("val") or 0.0)))
    return {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, n_rows),
    }


def check_split_lengths(bounds: dict[str, tuple[int, int]], spec: WindowSpec, source: str) -> None:
    """Every split must hold at least one full sample, or training/evaluation is meaningless."""
    for name, (start, stop) in bounds.items():
        if stop - start < spec.span:
            raise DataError(
                f"{source}: the {name} split has {stop - start} rows but one sample needs "
                f"{spec.span} (lookback {spec.lookback}"
                + (f" + horizon {spec.horizon}" if spec.mode == "forecast" else "")
                + "); use a longer series, a shorter lookback or another data.split"
            )


def date_split_bounds(index: pd.Index, train_end: object, val_end: object) -> dict[str, tuple[int, int]]:
    """Chronological row ranges cut at dates: train <= train_end < val <= val_end < test."""
    require(isinstance(index, pd.DatetimeIndex), "data.split.train_end", train_end,
            "splitting by date needs a dated series (set data.date_column)")
    train_stop, val_stop = pd.Timestamp(str(train_end)), pd.Timestamp(str(val_end))
    n_train, n_val = (int(index.searchsorted(end, side="right")) for end in (train_stop, val_stop))
    return {"train": (0, n_train), "val": (n_train, n_val), "test": (n_val, len(index))}


def series_split_bounds(index: pd.Index, split: dict) -> dict[str, tuple[int, int]]:
    """data.split as fractions {train, val, test} or, when either is set, dates {train_end, val_end}."""
    if split.get("train_end") is not None or split.get("val_end") is not None:
        return date_split_bounds(index, split.get("train_end"), split.get("val_end"))
    return split_bounds(len(index), split)
