"""Many series ("a universe") as one data set for one global model.

A universe is a long frame: one row per (date, series) with the series' value columns. Compared
with one series (pipeline.data.prepare):

- the split is by date, common to every series: cut dates come from the sorted union of dates
  (fractions) or from data.split's train_end/val_end, so no series' future is in another's
  training rows;
- windows are cut inside one series' segment of one split, never across either boundary;
- scalers are per series, fit on that series' train rows only, kept as (S, F) arrays so a model
  can unscale a window by its series id;
- windows are never materialised: each split holds its rows once (float32) and an index of
  window start rows, and a batch is gathered on demand (start + arange(span)), so memory does
  not grow with lookback x windows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.scaling import AffineScaler
from pipeline.data.transforms import changes, first_non_positive
from pipeline.data.validation import Rules, column_list, parse_dates
from pipeline.data.windowing import SPLITS, WindowSpec, series_split_bounds
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DATE, SERIES = "date", "series"
PARQUET_SUFFIXES = (".parquet", ".pq")
# How many dropped codes the warning names; the full list is in UniverseData.dropped.
NAMED_IN_WARNING = 5


# --- a synthetic universe ---------------------------------------------------------------------


def synthetic_universe(n_series: int = 500, days: int = 1500, seed: int = 0, *,
                       correlation: float = 0.3, regimes: int = 3,
                       start: str = "2015-01-05") -> pd.DataFrame:
    """Correlated geometric random walks, long format (date, series, close), sorted by
    (series, date).

    Daily log return of series s: drift[s, regime] + vol[s, regime] * (sqrt(c) * market_t +
    sqrt(1 - c) * own_{s,t}); with unit-variance shocks the pairwise correlation is c (a little
    less where the two series' volatilities change at different dates). Each series changes
    regime `regimes` times at its own random dates. About a fifth of the series start late, some
    very late, so a universe holds short histories as real ones do (listings, IPOs).
    """
    if not 0.0 <= correlation <= 1.0:
        raise ConfigError(f"correlation={correlation!r}: must be in [0, 1] (one common factor)")
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=days, name=DATE)
    returns = _factor_returns(rng, days, n_series, correlation)
    drift, vol = _regime_paths(rng, days, n_series, regimes)
    returns = drift + vol * returns
    first_day = _first_days(rng, days, n_series)
    listed = np.arange(days)[:, None] >= first_day[None, :]
    # Returns before a listing are zero, so each price path starts at its own first price.
    log_prices = np.log(rng.uniform(5.0, 200.0, n_series)) + np.cumsum(returns * listed, axis=0)
    series, day = np.nonzero(listed.T)  # series-major: the frame comes out sorted
    codes = np.array([f"S{i:04d}" for i in range(n_series)])
    return pd.DataFrame({DATE: dates[day], SERIES: codes[series],
                         "close": np.exp(log_prices[day, series])})


def _factor_returns(rng: np.random.Generator, days: int, n: int, correlation: float) -> np.ndarray:
    """(days, n) unit-variance shocks with pairwise correlation `correlation`."""
    market = rng.standard_normal((days, 1))
    own = rng.standard_normal((days, n))
    return np.sqrt(correlation) * market + np.sqrt(1.0 - correlation) * own


def _regime_paths(rng: np.random.Generator, days: int, n: int,
                  regimes: int) -> tuple[np.ndarray, np.ndarray]:
    """(days, n) drift and volatility, piecewise constant with `regimes` changes per series."""
    changes = np.sort(rng.integers(1, max(days, 2), size=(n, regimes)), axis=1)
    # Regime of (day, series): how many of the series' change days have passed.
    regime = (np.arange(days)[:, None, None] >= changes[None, :, :]).sum(axis=2)
    drifts = rng.normal(0.0002, 0.0008, size=(n, regimes + 1))
    vols = rng.uniform(0.01, 0.03, size=(n, regimes + 1))
    columns = np.arange(n)[None, :]
    return drifts[columns, regime], vols[columns, regime]


def _first_days(rng: np.random.Generator, days: int, n: int) -> np.ndarray:
    """Day each series lists: day 0 for most, anywhere up to the last tenth of days for some."""
    late = rng.random(n) < 0.2
    return np.where(late, rng.integers(0, max(int(days * 0.9), 1), size=n), 0)


# --- reading a long frame ---------------------------------------------------------------------


def read_long_frame(path: str | Path, date_format: str | None = None) -> pd.DataFrame:
    """A CSV or Parquet file with columns date, series and numeric value columns -> a frame
    sorted by (series, date) with parsed dates, str series codes and float64 values.

    Every problem is one DataError line naming the file and the column, value or data row.
    """
    path = Path(path).expanduser()
    label = f"universe {path}"
    raw = _read_table(path, label)
    for name in (DATE, SERIES):
        if name not in raw.columns:
            raise DataError(f"{label}: missing column {name!r}; available: "
                            f"{column_list(raw.columns)} (a long frame has date, series, values)")
    values = [c for c in raw.columns if c not in (DATE, SERIES)]
    if not values:
        raise DataError(f"{label}: no value columns besides {DATE!r} and {SERIES!r}")
    frame = pd.DataFrame({DATE: _dates(raw, label, date_format), SERIES: _codes(raw, label)})
    for name in values:
        frame[name] = _numbers(raw, name, frame, label)
    _check_unique_pairs(frame, label)
    return _sorted(frame)


def _read_table(path: Path, label: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{label}: no such file (relative paths start at {Path.cwd()})")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        # Codes stay text: '000001' is not the number 1.
        return pd.read_csv(path, dtype={SERIES: str}, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError,
            OSError) as exc:
        first = (str(exc).strip().splitlines() or ["no details"])[0]
        raise DataError(f"{label}: cannot read it ({type(exc).__name__}: {first}); "
                        "export it again as UTF-8 CSV or Parquet") from None


def _dates(raw: pd.DataFrame, label: str, date_format: str | None) -> np.ndarray:
    rules = Rules(label=label, columns=[], date_column=DATE, date_format=date_format)
    dates = parse_dates(raw[DATE].reset_index(drop=True), rules)
    return pd.DatetimeIndex(dates).as_unit("ns").to_numpy()


def _codes(raw: pd.DataFrame, label: str) -> np.ndarray:
    codes = raw[SERIES]
    empty = codes.isna().to_numpy() | (codes.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        raise DataError(f"{label}: column {SERIES!r} is empty in data row "
                        f"{int(np.flatnonzero(empty)[0]) + 1}; every row needs its series code")
    return codes.astype(str).str.strip().to_numpy(dtype=object)


def _numbers(raw: pd.DataFrame, name: str, frame: pd.DataFrame, label: str) -> np.ndarray:
    """The column as float64; empty cells stay NaN (prepare_universe refuses them where used)."""
    values = pd.to_numeric(raw[name], errors="coerce")
    bad = (values.isna() & raw[name].notna()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{label}: column {name!r} has a non-numeric value {raw[name].iloc[row]!r} "
                        f"in data row {row + 1} ({_where(frame, row)})")
    return values.to_numpy(dtype=np.float64)


def _check_unique_pairs(frame: pd.DataFrame, label: str) -> None:
    """One row per (series, date): two would make a window's step ambiguous."""
    repeated = frame.duplicated([SERIES, DATE]).to_numpy()
    if repeated.any():
        second = int(np.flatnonzero(repeated)[0])
        same = ((frame[SERIES] == frame[SERIES].iloc[second])
                & (frame[DATE] == frame[DATE].iloc[second])).to_numpy()
        first = int(np.flatnonzero(same)[0])
        raise DataError(f"{label}: {_where(frame, second)} appears twice (data rows {first + 1} "
                        f"and {second + 1}); keep one row per series and date")


def _where(frame: pd.DataFrame, row: int) -> str:
    return f"series {frame[SERIES].iloc[row]!r} on {pd.Timestamp(frame[DATE].iloc[row]):%Y-%m-%d}"


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Sorted by (series, date) with a RangeIndex: positions are the rows windows point at."""
    return frame.sort_values([SERIES, DATE], kind="stable", ignore_index=True)


# --- the window index -------------------------------------------------------------------------


@dataclass(frozen=True)
class UniverseWindows:
    """One split's windows over every kept series, gathered on demand.

    x_values (R, F) / y_values (R, T): the split's scaled rows, series after series (float32);
    frame_rows (R,): each row's position in the long frame; starts (W,): each window's first
    row in x_values; series_ids (W,): its series (position in UniverseData.series). A window
    covers rows start .. start + span - 1, all of one series' segment of this split.
    """

    x_values: np.ndarray
    y_values: np.ndarray
    frame_rows: np.ndarray
    starts: np.ndarray
    series_ids: np.ndarray
    spec: WindowSpec

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def target_offsets(self) -> np.ndarray:
        """Offsets of the targets from a window's start: the steps after the inputs (forecast),
        or the input steps themselves (sequence)."""
        lb = self.spec.lookback
        return np.arange(lb, self.spec.span) if self.spec.mode == "forecast" else np.arange(lb)

    def batch(self, indices: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Windows `indices` -> x (B, lookback, F), y (B, target_steps, T), series_ids (B,)."""
        starts = self.starts[indices][:, None]
        x = self.x_values[starts + np.arange(self.spec.lookback)]
        y = self.y_values[starts + self.target_offsets]
        return x, y, self.series_ids[indices]

    def rows(self, indices: Any) -> np.ndarray:
        """(B, target_steps) positions in the long frame of each window's targets."""
        return self.frame_rows[self.starts[indices][:, None] + self.target_offsets]

    def input_rows(self, indices: Any) -> np.ndarray:
        """(B, lookback) positions in the long frame of each window's inputs."""
        return self.frame_rows[self.starts[indices][:, None] + np.arange(self.spec.lookback)]


@dataclass(frozen=True)
class UniverseData:
    """A prepared universe: the window index per split and per-series scalers.

    Series id = position in `series`; x_centers/x_scales are (S, F), y_centers/y_scales
    (S, T): scaled = (raw - center[id]) / scale[id]. cut_dates: the first date of val and of
    test, common to all series (train < val <= date < test). dropped: code -> why.
    `frame` is the long frame (sorted by series, date) that `rows()` positions point into.
    With a target_transform the windows' y (and y scalers) hold each series' changes; the frame
    keeps the levels. digest/source/label name the data (set by the loader); failed: codes a
    fetch could not deliver, with why.
    """

    series: list[str]
    windows: dict[str, UniverseWindows]
    x_centers: np.ndarray
    x_scales: np.ndarray
    y_centers: np.ndarray
    y_scales: np.ndarray
    inputs: list[str]
    targets: list[str]
    spec: WindowSpec
    dropped: dict[str, str]
    cut_dates: dict[str, pd.Timestamp]
    frame: pd.DataFrame
    target_transform: str = "none"
    digest: str = ""
    source: str = "universe"
    label: str = "universe"
    failed: dict[str, str] | None = None
    cache_path: Path | None = None
    layout: str = "universe"

    def unscale_y(self, y: np.ndarray, series_ids: np.ndarray) -> np.ndarray:
        """(B, steps, T) scaled targets (or forecasts) -> raw scale, each by its series."""
        ids = np.asarray(series_ids)
        return (np.asarray(y, dtype=np.float64) * self.y_scales[ids][:, None, :]
                + self.y_centers[ids][:, None, :])


# --- preparing a universe ---------------------------------------------------------------------


def prepare_universe(frame: pd.DataFrame, inputs: Sequence[str], targets: Sequence[str],
                     spec: WindowSpec, split: Mapping[str, Any], scaler: str = "standard",
                     min_windows: int = 1, target_transform: str = "none") -> UniverseData:
    """Split a long frame by date, drop series with too little history, fit per-series scalers
    on train rows, index every split's windows.

    `split`: fractions {train, val, test} of the union of dates, or dates {train_end, val_end}.
    A series is kept when its train segment yields at least `min_windows` windows and its val
    and test segments at least one each. With a `target_transform` the targets are each series'
    changes from its previous row (a series' first row has none; it is never a target).
    """
    inputs, targets = list(inputs), list(targets)
    frame = _checked_frame(frame, [*dict.fromkeys([*inputs, *targets])])
    codes, vocabulary = pd.factorize(frame[SERIES], sort=True)
    cut_dates = common_cut_dates(frame[DATE], split)
    part = split_of_rows(frame[DATE].to_numpy(), cut_dates)
    counts = _rows_per_series_split(codes, part, len(vocabulary))
    per_split = {name: window_counts(counts[:, k], spec) for k, name in enumerate(SPLITS)}
    kept, dropped = _kept_series(vocabulary, counts, per_split, spec, min_windows)
    new_id = np.cumsum(kept) - 1  # old code -> position among kept series

    x_raw = frame[inputs].to_numpy(dtype=np.float64)
    y_raw = series_changes(frame, targets, codes, target_transform)
    train_rows = _rows_of(codes, part, kept, 0)
    train_ids = new_id[codes[train_rows]]
    x_scalers = fit_per_series(x_raw[train_rows], train_ids, scaler)
    has_change = ~np.isnan(y_raw[train_rows]).any(axis=1)  # all true without a transform
    y_scalers = fit_per_series(y_raw[train_rows][has_change], train_ids[has_change], scaler)
    del train_rows, train_ids, has_change

    windows = {}
    for k, name in enumerate(SPLITS):
        rows = _rows_of(codes, part, kept, k)
        ids = new_id[codes[rows]]
        windows[name] = UniverseWindows(
            x_values=_scaled(x_raw[rows], ids, *x_scalers),
            y_values=_scaled(y_raw[rows], ids, *y_scalers),
            frame_rows=rows, starts=window_starts(counts[kept, k], spec),
            series_ids=np.repeat(np.arange(int(kept.sum()), dtype=np.int32),
                                 per_split[name][kept]),
            spec=spec)
    return UniverseData(series=[str(c) for c in vocabulary[kept]], windows=windows,
                        x_centers=x_scalers[0], x_scales=x_scalers[1],
                        y_centers=y_scalers[0], y_scales=y_scalers[1],
                        inputs=inputs, targets=targets, spec=spec, dropped=dropped,
                        cut_dates=cut_dates, frame=frame, target_transform=target_transform)


def series_changes(frame: pd.DataFrame, targets: list[str], codes: np.ndarray,
                   kind: str) -> np.ndarray:
    """The target columns as the model learns them: levels, or each series' changes from its
    own previous row (NaN on a series' first row: no change crosses from one series to the next)."""
    levels = frame[targets].to_numpy(dtype=np.float64)
    if kind == "none":
        return levels
    if kind == "log_return" and (bad := first_non_positive(levels)) is not None:
        row, column = bad
        raise DataError(f"universe: data.target_transform=log_return needs prices > 0; column "
                        f"{targets[column]!r} is {levels[row, column]!r} for {_where(frame, row)}; "
                        "use data.target_transform=diff")
    out = changes(levels, kind)
    out[np.r_[0, np.flatnonzero(np.diff(codes)) + 1]] = np.nan
    return out


def _checked_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns a universe needs, sorted by (series, date), finite values, unique pairs."""
    label = "universe"
    missing = [c for c in (DATE, SERIES, *columns) if c not in frame.columns]
    if missing:
        raise DataError(f"{label}: missing column(s) {', '.join(map(repr, missing))}; available: "
                        f"{column_list(frame.columns)} (check data.inputs / data.targets)")
    if not pd.api.types.is_datetime64_any_dtype(frame[DATE]):
        raise DataError(f"{label}: column {DATE!r} holds {frame[DATE].dtype}, not dates; "
                        "read the file with read_long_frame")
    ordered = pd.MultiIndex.from_arrays([frame[SERIES], frame[DATE]]).is_monotonic_increasing
    if not (ordered and isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0):
        frame = _sorted(frame)
    _check_unique_pairs(frame, label)
    for name in columns:
        values = frame[name].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{label}: column {name!r} has {int(bad.sum())} missing or infinite "
                            f"value(s), the first {values[row]!r} for {_where(frame, row)}; "
                            "fill or drop those rows")
    return frame


def common_cut_dates(dates: pd.Series, split: Mapping[str, Any]) -> dict[str, pd.Timestamp]:
    """The first date of val and of test, from the sorted union of every series' dates: the same
    fractions or train_end/val_end a single series takes (series_split_bounds)."""
    split = dict(split)
    given = [split.get("train_end") is not None, split.get("val_end") is not None]
    if any(given) and not all(given):
        raise ConfigError(f"data.split={split!r}: a split by date needs both train_end and val_end")
    union = pd.DatetimeIndex(np.unique(dates.to_numpy()), name=DATE)
    bounds = series_split_bounds(union, split)
    for name, (start, stop) in bounds.items():
        if stop <= start:
            raise DataError(f"universe: the {name} split holds no dates (data.split={split!r} over "
                            f"{union[0]:%Y-%m-%d}..{union[-1]:%Y-%m-%d}); move the cut dates")
    return {"val": union[bounds["val"][0]], "test": union[bounds["test"][0]]}


def split_of_rows(dates: np.ndarray, cut_dates: Mapping[str, pd.Timestamp]) -> np.ndarray:
    """0 train, 1 val, 2 test per row: date < val cut, val cut <= date < test cut, after."""
    cuts = np.array([cut_dates["val"], cut_dates["test"]], dtype=dates.dtype)
    return np.searchsorted(cuts, dates, side="right").astype(np.int8)


def _rows_per_series_split(codes: np.ndarray, part: np.ndarray, n_series: int) -> np.ndarray:
    """(S, 3) rows each series holds in each split."""
    flat = np.bincount(codes * len(SPLITS) + part, minlength=n_series * len(SPLITS))
    return flat.reshape(n_series, len(SPLITS))


def window_counts(rows: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """Windows in segments of `rows` rows: starts 0, stride, ... while a whole span fits."""
    rows = np.asarray(rows, dtype=np.int64)
    return np.where(rows >= spec.span, (rows - spec.span) // spec.stride + 1, 0)


def window_starts(rows: np.ndarray, spec: WindowSpec) -> np.ndarray:
    """Start rows of every window when segments of `rows` rows lie back to back (no loop)."""
    rows = np.asarray(rows, dtype=np.int64)
    counts = window_counts(rows, spec)
    segment_start = np.cumsum(rows) - rows
    first_window = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first_window, counts)
    return np.repeat(segment_start, counts) + spec.stride * k


def _kept_series(vocabulary: pd.Index, counts: np.ndarray, per_split: dict[str, np.ndarray],
                 spec: WindowSpec, min_windows: int) -> tuple[np.ndarray, dict[str, str]]:
    """Which series have enough history in every split; why each other one is dropped."""
    needs = {"train": max(min_windows, 1), "val": 1, "test": 1}
    short = np.stack([per_split[name] < needs[name] for name in SPLITS], axis=1)
    kept = ~short.any(axis=1)
    dropped = {}
    for s in np.flatnonzero(~kept):
        name = SPLITS[int(np.argmax(short[s]))]
        k = SPLITS.index(name)
        dropped[str(vocabulary[s])] = (f"{name} has {counts[s, k]} rows, {per_split[name][s]} "
                                       f"window(s) of {spec.span} rows; needs {needs[name]}")
    if not kept.any():
        first = next(iter(dropped.items()))
        raise DataError(f"universe: no series has enough history (all {len(dropped)} dropped; "
                        f"{first[0]}: {first[1]}); use a shorter lookback or another data.split")
    if dropped:
        codes = list(dropped)[:NAMED_IN_WARNING]
        log.warning("universe: dropped %d of %d series with too little history (%s%s)",
                    len(dropped), len(vocabulary), ", ".join(codes),
                    ", ..." if len(dropped) > len(codes) else "")
    return kept, dropped


def _rows_of(codes: np.ndarray, part: np.ndarray, kept: np.ndarray, k: int) -> np.ndarray:
    """Frame positions of split k's rows of kept series, in frame order (series, then date)."""
    return np.flatnonzero((part == k) & kept[codes])


def fit_per_series(values: np.ndarray, ids: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(S, C) centers and scales, one AffineScaler per series on its rows; `ids` must be sorted
    (rows series after series), as the frame's order leaves them."""
    cuts = np.flatnonzero(np.diff(ids)) + 1
    scalers = [AffineScaler.fit(kind, chunk) for chunk in np.split(values, cuts)]
    return (np.stack([s.center for s in scalers]), np.stack([s.scale for s in scalers]))


def _scaled(values: np.ndarray, ids: np.ndarray, centers: np.ndarray,
            scales: np.ndarray) -> np.ndarray:
    """AffineScaler.transform, each row by its series' scaler; float32 halves what a split holds."""
    return ((values - centers[ids]) / scales[ids]).astype(np.float32)
