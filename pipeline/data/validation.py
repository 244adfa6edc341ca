"""Checks every fetched frame passes before anything trains on it or is cached.

validate() turns a source's frame into the frame the DataModule uses: indexed by date (or by
the source's own index, or by row for samples), only the configured columns, float values,
sorted, no duplicates, no gaps unless data.fill says how to fill them. Every failure is one
DataError line naming the source (and file), the column and the offending value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import DataConfig
from pipeline.errors import DataError

SAMPLE_COLUMNS = ("sample", "step", "split")


@dataclass(frozen=True)
class Rules:
    label: str  # names the data in messages: "csv prices.csv", "stock 000001.SH", "sst"
    columns: list[str]  # inputs and targets, each once
    layout: str = "series"
    date_column: str | None = None
    date_format: str | None = None
    fill: str = "none"
    positive: list[str] = field(default_factory=list)  # columns that must be > 0 (prices)


def rules_from_config(data: DataConfig, label: str) -> Rules:
    columns = list(dict.fromkeys([*data.inputs, *data.targets]))
    positive = data.positive
    if isinstance(positive, bool):
        positive = columns if positive else []
    return Rules(label=label, columns=columns, layout=data.layout, date_column=data.date_column,
                 date_format=data.date_format, fill=data.fill,
                 positive=[c for c in positive if c in columns])


def validate(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    if frame is None or frame.empty:
        raise DataError(f"{rules.label}: no rows; check the source's parameters (file, code, dates)")
    if rules.layout == "samples":
        return _validate_samples(frame, rules)
    return _validate_series(frame, rules)


# --- series ---------------------------------------------------------------------------------


def _validate_series(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    if rules.date_column:
        frame = with_date_index(frame, rules)
    require_columns(frame, rules.columns, rules.label)
    frame = numeric_columns(frame[rules.columns], rules)
    frame = unique_sorted_index(frame, rules)
    frame = filled(frame, rules)
    check_positive(frame, rules)
    return frame


def with_date_index(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """The date column (or a date-named index) parsed into a DatetimeIndex."""
    name = rules.date_column
    if name in frame.columns:
        raw = frame[name].reset_index(drop=True)
        frame = frame.drop(columns=[name])
    elif frame.index.name == name:
        raw = frame.index.to_series().reset_index(drop=True)
    else:
        raise DataError(f"{rules.label}: missing date column {name!r}; available: "
                        f"{column_list(frame.columns)} (set data.date_column)")
    dates = parse_dates(raw, rules)
    # One resolution for every source, so a frame and its cached copy hash the same.
    return frame.set_axis(pd.DatetimeIndex(dates, name=name).as_unit("ns"), axis=0)


def parse_dates(raw: pd.Series, rules: Rules) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(raw):
        dates = raw
    else:
        dates = pd.to_datetime(raw.astype("string"), format=rules.date_format, errors="coerce")
    bad = dates.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        what = "is empty" if pd.isna(raw.iloc[row]) else f"has an unparseable date {raw.iloc[row]!r}"
        raise DataError(f"{rules.label}: column {rules.date_column!r} {what} in data row {row + 1}; "
                        "fix it, or set data.date_format (e.g. %d/%m/%Y)")
    return dates


def require_columns(frame: pd.DataFrame, columns: Sequence[str], label: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{label}: missing column(s) {', '.join(map(repr, missing))}; "
                        f"available: {column_list(frame.columns)} "
                        "(check data.inputs / data.targets)")


def column_list(columns: Sequence[object], most: int = 12, width: int = 32) -> str:
    """The columns a file has, for a message: a few, each cut short, so an error about a file
    never prints much of what is in it."""
    names = [str(c) if len(str(c)) <= width else str(c)[:width] + "…" for c in list(columns)[:most]]
    more = len(columns) - most
    return ", ".join(names) + (f" (and {more} more)" if more > 0 else "")


def numeric_columns(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    out = frame.copy()
    for name in rules.columns:
        values = pd.to_numeric(out[name], errors="coerce")
        bad = values.isna() & out[name].notna()
        if bad.any():
            where = _position(out, int(np.flatnonzero(bad.to_numpy())[0]))
            raise DataError(f"{rules.label}: column {name!r} has a non-numeric value "
                            f"{out[name][bad].iloc[0]!r} at {where}")
        out[name] = values.astype(np.float64)
    return out


def unique_sorted_index(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """Drop exact repeats of a row, fail on one date with two different values, sort by date."""
    repeated = frame.index.duplicated(keep=False)
    if repeated.any():
        rows = frame.reset_index(allow_duplicates=True)
        frame = frame[~rows.duplicated(keep="first").to_numpy()]
        if frame.index.duplicated().any():
            raise DataError(_conflict_message(frame, rules))
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index(kind="stable")
    return frame


def _conflict_message(frame: pd.DataFrame, rules: Rules) -> str:
    key = frame.index[frame.index.duplicated()][0]
    same = frame.loc[[key]]
    differing = [c for c in same.columns if same[c].nunique(dropna=False) > 1]
    column = differing[0] if differing else same.columns[0]
    values = ", ".join(map(repr, same[column].tolist()))
    return (f"{rules.label}: {_format_key(key, frame.index.name)} appears {len(same)} times with different "
            f"{column!r} values ({values}); remove the duplicates")


def filled(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    """NaN and ±inf are gaps: an error unless data.fill names a way to fill them."""
    values = frame.replace([np.inf, -np.inf], np.nan)
    if rules.fill != "none" and values.isna().any().any():
        if rules.fill == "ffill":
            values = values.ffill()
        else:
            method = "time" if isinstance(values.index, pd.DatetimeIndex) else "linear"
            values = values.interpolate(method=method, limit_area="inside")
    for name in rules.columns:
        gaps = ~np.isfinite(frame[name].to_numpy()) if rules.fill == "none" else values[name].isna().to_numpy()
        if gaps.any():
            first = int(np.flatnonzero(gaps)[0])
            raise DataError(f"{rules.label}: column {name!r} has {int(gaps.sum())} "
                            f"{_gap_kind(frame[name].iloc[first])} value(s), the first at "
                            f"{_position(frame, first)}; {_fill_advice(rules.fill)}")
    return values


def _gap_kind(value: float) -> str:
    return "NaN" if pd.isna(value) else "infinite" if np.isinf(value) else "missing"


def _fill_advice(fill: str) -> str:
    if fill == "none":
        return "fix the data, or set data.fill=ffill or data.fill=interpolate"
    return f"data.fill={fill} cannot fill gaps at the start (or, interpolating, the end); drop those rows"


def check_positive(frame: pd.DataFrame, rules: Rules) -> None:
    for name in rules.positive:
        bad = frame[name].to_numpy() <= 0
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{rules.label}: column {name!r} has a non-positive price "
                            f"{float(frame[name].iloc[first])} at {_position(frame, first)}; "
                            "prices must be > 0 (or set data.positive=false)")


def _position(frame: pd.DataFrame, row: int) -> str:
    if {"sample", "step"} <= set(frame.columns):
        return f"sample {frame['sample'].iloc[row]} step {frame['step'].iloc[row]}"
    return _format_key(frame.index[row], frame.index.name)


def _format_key(key: Any, index_name: Any) -> str:
    """A date as 2024-01-31; any other index value with the index's name: `t=0.5`."""
    if isinstance(key, pd.Timestamp):
        return f"{key:%Y-%m-%d}" if key == key.normalize() else str(key)
    return f"{index_name or 'index'}={key}"


# --- samples --------------------------------------------------------------------------------


def _validate_samples(frame: pd.DataFrame, rules: Rules) -> pd.DataFrame:
    require_columns(frame, [*SAMPLE_COLUMNS, *rules.columns], rules.label)
    frame = frame[[*SAMPLE_COLUMNS, *rules.columns]].copy()
    frame = numeric_columns(frame, rules)
    frame = frame.sort_values(["sample", "step"], kind="stable", ignore_index=True)
    if frame.duplicated(["sample", "step"]).any():
        first = frame[frame.duplicated(["sample", "step"])].iloc[0]
        raise DataError(f"{rules.label}: sample {first['sample']} step {first['step']} appears "
                        "more than once")
    _check_sample_shapes(frame, rules)
    for name in rules.columns:
        gaps = ~np.isfinite(frame[name].to_numpy())
        if gaps.any():
            first = int(np.flatnonzero(gaps)[0])
            raise DataError(f"{rules.label}: column {name!r} has {int(gaps.sum())} "
                            f"{_gap_kind(frame[name].iloc[first])} value(s), the first at "
                            f"{_position(frame, first)}; samples cannot be filled, fix the data")
    check_positive(frame, rules)
    # Not "row": evaluation already names a column so (the target's position in the frame).
    frame.index = pd.RangeIndex(len(frame), name="sample_row")
    return frame


def _check_sample_shapes(frame: pd.DataFrame, rules: Rules) -> None:
    """Every sample: steps 0..n-1 with the same n, and one split label."""
    groups = frame.groupby("sample", sort=False)
    lengths = groups["step"].agg(["size", "min", "max"])
    ragged = lengths[(lengths["size"] != lengths["size"].iloc[0]) | (lengths["min"] != 0)
                     | (lengths["max"] != lengths["size"] - 1)]
    if len(ragged):
        raise DataError(f"{rules.label}: sample {ragged.index[0]} has steps "
                        f"{sorted(frame.loc[frame['sample'] == ragged.index[0], 'step'].tolist())}; "
                        f"every sample needs steps 0..{lengths['size'].iloc[0] - 1}")
    mixed = groups["split"].nunique()
    if (mixed > 1).any():
        raise DataError(f"{rules.label}: sample {mixed[mixed > 1].index[0]} is in more than one split")
