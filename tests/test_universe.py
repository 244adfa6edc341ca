"""Universe data layer: date split common to all series, windows inside one series and split,
per-series train-only scalers, short series dropped, one-line errors on bad long files."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.scaling import AffineScaler
from pipeline.data.universe import (
    prepare_universe,
    read_long_frame,
    synthetic_universe,
    window_counts,
)
from pipeline.data.windowing import SPLITS, WindowSpec, make_windows
from pipeline.errors import DataError

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
CALENDAR = pd.bdate_range("2020-01-01", periods=200, name="date")


def long_frame(histories: list[tuple[int, int]]) -> pd.DataFrame:
    """Series i covers CALENDAR[first : first + length]; `pos` is each row's frame position, so
    a window's values say exactly which rows it holds."""
    parts = [pd.DataFrame({"date": CALENDAR[first:first + length], "series": f"T{i:02d}"})
             for i, (first, length) in enumerate(histories)]
    frame = pd.concat(parts, ignore_index=True)
    frame["pos"] = np.arange(len(frame), dtype=np.float64)
    return frame


def split_name(dates: pd.Series, cut_dates: dict) -> np.ndarray:
    return np.where(dates < cut_dates["val"], "train",
                    np.where(dates < cut_dates["test"], "val", "test"))


specs = st.builds(WindowSpec, lookback=st.integers(1, 8), horizon=st.integers(1, 4),
                  stride=st.integers(1, 3), mode=st.sampled_from(["forecast", "sequence"]))
histories = st.lists(st.tuples(st.integers(0, 120), st.integers(1, 80)), min_size=1, max_size=6)


def expected_cuts(frame: pd.DataFrame) -> tuple[int, int, np.ndarray]:
    """FRACTIONS over the union of dates, counted independently of the module."""
    union = np.unique(frame["date"].to_numpy())
    n_train = int(round(len(union) * FRACTIONS["train"]))
    n_val = int(round(len(union) * FRACTIONS["val"]))
    return n_train, n_train + n_val, union


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, history=histories, shuffle=st.integers(0, 2**16))
def test_windows_stay_inside_one_series_and_one_split(spec: WindowSpec, history,
                                                      shuffle: int) -> None:
    frame = long_frame(history)
    val_at, test_at, union = expected_cuts(frame)
    part = np.select([frame["date"] < union[min(val_at, len(union) - 1)],
                      frame["date"] < union[min(test_at, len(union) - 1)]], ["train", "val"], "test")
    expected_kept = [code for code, rows in frame.groupby("series").indices.items()
                     if all(window_counts(np.array([(part[rows] == name).sum()]), spec)[0] >= 1
                            for name in SPLITS)]
    # The module sorts what it is given: a shuffled frame comes back in (series, date) order.
    shuffled = frame.sample(frac=1.0, random_state=shuffle)
    if not (0 < val_at < test_at < len(union)):
        with pytest.raises(DataError, match="split holds no dates"):
            prepare_universe(shuffled, ["pos"], ["pos"], spec, FRACTIONS, scaler="none")
        return
    if not expected_kept:
        with pytest.raises(DataError, match="no series has enough history"):
            prepare_universe(shuffled, ["pos"], ["pos"], spec, FRACTIONS, scaler="none")
        return
    data = prepare_universe(shuffled, ["pos"], ["pos"], spec, FRACTIONS, scaler="none")
    pd.testing.assert_frame_equal(data.frame, frame)
    assert data.cut_dates == {"val": union[val_at], "test": union[test_at]}
    assert data.series == expected_kept
    assert set(data.dropped) == set(frame["series"]) - set(expected_kept)
    codes = frame["series"].to_numpy()

    for name, windows in data.windows.items():
        everything = np.arange(len(windows))
        x, y, ids = windows.batch(everything)
        assert x.shape == (len(windows), spec.lookback, 1)
        assert y.shape == (len(windows), spec.target_steps, 1)
        inputs = x[..., 0].astype(np.int64)
        rows = np.concatenate([inputs, windows.rows(everything)], axis=1)
        np.testing.assert_array_equal(y[..., 0], windows.rows(everything))
        # consecutive frame rows (the frame is sorted by series, date), one series, one split
        np.testing.assert_array_equal(np.diff(inputs, axis=1), 1)
        window_codes = codes[rows]
        assert (window_codes == np.array(data.series)[ids][:, None]).all()
        assert (part[rows] == name).all()
        # every window of every kept series is there, none twice
        per_series = np.bincount(ids, minlength=len(data.series))
        for sid, code in enumerate(data.series):
            n = int((part[codes == code] == name).sum())
            assert per_series[sid] == window_counts(np.array([n]), spec)[0]


def test_the_date_split_is_common_to_all_series() -> None:
    frame = synthetic_universe(12, 400, seed=3)
    data = prepare_universe(frame, ["close"], ["close"], WindowSpec(10, 2), FRACTIONS)
    target_dates = {}
    for name, windows in data.windows.items():
        rows = windows.rows(np.arange(len(windows)))
        target_dates[name] = data.frame["date"].to_numpy()[rows]
    assert target_dates["train"].max() < target_dates["val"].min()
    assert target_dates["val"].max() < target_dates["test"].min()
    assert target_dates["val"].min() >= data.cut_dates["val"]
    assert target_dates["test"].min() >= data.cut_dates["test"]
    union = np.unique(frame["date"])
    assert data.cut_dates["val"] == union[int(round(len(union) * 0.6))]


def test_split_by_explicit_dates() -> None:
    frame = long_frame([(0, 200), (50, 150)])
    split = {"train_end": "2020-05-29", "val_end": "2020-07-31"}
    data = prepare_universe(frame, ["pos"], ["pos"], WindowSpec(5), split, scaler="none")
    assert data.cut_dates == {"val": pd.Timestamp("2020-06-01"), "test": pd.Timestamp("2020-08-03")}
    dates = data.frame["date"].to_numpy()
    train = dates[data.windows["train"].rows(np.arange(len(data.windows["train"])))]
    assert train.max() <= np.datetime64("2020-05-29")


def scaler_of(data, frame: pd.DataFrame, code: str, column: str) -> AffineScaler:
    own = frame[(frame["series"] == code) & (frame["date"] < data.cut_dates["val"])]
    return AffineScaler.fit("standard", own[[column]].to_numpy())


def test_each_series_scaler_is_fit_on_its_own_train_rows_only() -> None:
    frame = synthetic_universe(6, 300, seed=1, regimes=1)
    frame["volume"] = np.random.default_rng(0).uniform(1, 9, len(frame))
    spec, inputs = WindowSpec(8, 1), ["close", "volume"]
    data = prepare_universe(frame, inputs, ["close"], spec, FRACTIONS)
    code = data.series[1]
    sid = data.series.index(code)
    for column, centers, scales, j in (("close", data.x_centers, data.x_scales, 0),
                                       ("volume", data.x_centers, data.x_scales, 1),
                                       ("close", data.y_centers, data.y_scales, 0)):
        expected = scaler_of(data, frame, code, column)
        np.testing.assert_allclose(centers[sid, j], expected.center[0], rtol=1e-12)
        np.testing.assert_allclose(scales[sid, j], expected.scale[0], rtol=1e-12)

    own_test = (frame["series"] == code) & (frame["date"] >= data.cut_dates["test"])
    other = frame["series"] == data.series[2]
    changed = frame.copy()
    changed.loc[own_test, "close"] *= 10.0
    changed.loc[other, ["close", "volume"]] *= 3.0
    again = prepare_universe(changed, inputs, ["close"], spec, FRACTIONS)
    assert again.cut_dates == data.cut_dates and again.series == data.series
    for name in ("x_centers", "x_scales", "y_centers", "y_scales"):
        np.testing.assert_array_equal(getattr(again, name)[sid], getattr(data, name)[sid])
    # the other series' scaler did follow its own change
    assert again.y_centers[2, 0] == pytest.approx(3.0 * data.y_centers[2, 0])


def test_a_batch_equals_windows_cut_from_each_series_raw_rows() -> None:
    frame = synthetic_universe(8, 250, seed=5)
    frame["volume"] = np.random.default_rng(1).uniform(1, 9, len(frame))
    spec = WindowSpec(lookback=12, horizon=3, stride=2)
    data = prepare_universe(frame, ["close", "volume"], ["close"], spec, FRACTIONS, "minmax")
    for name, windows in data.windows.items():
        expected_x, expected_y, expected_ids = [], [], []
        for sid, code in enumerate(data.series):
            own = frame[frame["series"] == code]
            own = own[split_name(own["date"], data.cut_dates) == name]
            x_scaler = AffineScaler(data.x_centers[sid], data.x_scales[sid])
            y_scaler = AffineScaler(data.y_centers[sid], data.y_scales[sid])
            cut = make_windows(x_scaler.transform(own[["close", "volume"]].to_numpy()),
                               y_scaler.transform(own[["close"]].to_numpy()), spec)
            expected_x.append(cut.x)
            expected_y.append(cut.y)
            expected_ids.append(np.full(len(cut), sid))
        order = np.random.default_rng(0).permutation(len(windows))[:256]
        x, y, ids = windows.batch(order)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, np.concatenate(expected_x).astype(np.float32)[order])
        np.testing.assert_array_equal(y, np.concatenate(expected_y).astype(np.float32)[order])
        np.testing.assert_array_equal(ids, np.concatenate(expected_ids)[order])
        raw = data.unscale_y(y, ids)[..., 0]
        np.testing.assert_allclose(raw, frame["close"].to_numpy()[windows.rows(order)], rtol=1e-5)


def test_short_series_are_dropped_and_named(caplog: pytest.LogCaptureFixture) -> None:
    # Cuts at rows 120 and 160 of 200 dates. T02: 15 rows; T03 lists after the val cut (no
    # train rows); T04 ends 5 rows into test.
    frame = long_frame([(0, 200), (0, 200), (0, 15), (150, 50), (0, 165)])
    with caplog.at_level(logging.WARNING, logger="pipeline.data.universe"):
        data = prepare_universe(frame, ["pos"], ["pos"], WindowSpec(20), FRACTIONS)
    assert data.series == ["T00", "T01"]
    assert set(data.dropped) == {"T02", "T03", "T04"}
    assert data.dropped["T02"].startswith("train has 15 rows")
    assert data.dropped["T03"].startswith("train has 0 rows")
    assert data.dropped["T04"].startswith("test has 5 rows")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "dropped 3 of 5" in lines[0] and "T02" in lines[0]

    # 120 train rows give 100 windows of 20 + 1 rows: enough for min_windows=100, not for 101
    most = prepare_universe(frame, ["pos"], ["pos"], WindowSpec(20), FRACTIONS, min_windows=100)
    assert most.series == ["T00", "T01"]
    with pytest.raises(DataError, match="no series has enough history") as error:
        prepare_universe(frame, ["pos"], ["pos"], WindowSpec(20), FRACTIONS, min_windows=101)
    assert "\n" not in str(error.value)


def write(tmp_path, text: str):
    path = tmp_path / "universe.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "match"), [
    ("day,series,close\n2020-01-02,A,1\n", r"universe .*universe\.csv: missing column 'date'"),
    ("date,ticker,close\n2020-01-02,A,1\n", r"missing column 'series'"),
    ("date,series,close\n2020-01-02,A,1\n2020-13-45,A,2\n",
     r"column 'date' has an unparseable date '2020-13-45' in data row 2"),
    ("date,series,close\n2020-01-02,A,1\n2020-01-03,A,2\n2020-01-02,A,3\n",
     r"series 'A' on 2020-01-02 appears twice \(data rows 1 and 3\)"),
    ("date,series,close\n2020-01-02,A,1\n2020-01-03,B,n/a?\n",
     r"column 'close' has a non-numeric value 'n/a\?' in data row 2 \(series 'B' on 2020-01-03\)"),
])
def test_read_long_frame_errors_are_one_line(tmp_path, text: str, match: str) -> None:
    with pytest.raises(DataError, match=match) as error:
        read_long_frame(write(tmp_path, text))
    assert "\n" not in str(error.value)


def test_read_long_frame_sorts_and_keeps_codes_as_text(tmp_path) -> None:
    path = write(tmp_path, "date,series,close,volume\n2020-01-03,000001,2,5\n"
                           "2020-01-02,600000,9,1\n2020-01-02,000001,1,4\n")
    frame = read_long_frame(path)
    assert frame["series"].tolist() == ["000001", "000001", "600000"]
    assert frame["date"].tolist() == [pd.Timestamp(d) for d in
                                      ("2020-01-02", "2020-01-03", "2020-01-02")]
    assert frame["close"].tolist() == [1.0, 2.0, 9.0]
    parquet = tmp_path / "universe.parquet"
    frame.sample(frac=1.0, random_state=0).to_parquet(parquet)
    pd.testing.assert_frame_equal(read_long_frame(parquet), frame)


def test_synthetic_universe_shape_determinism_and_correlation() -> None:
    frame = synthetic_universe(40, 600, seed=7, correlation=0.4)
    assert list(frame.columns) == ["date", "series", "close"]
    assert frame["series"].nunique() == 40 and frame["date"].nunique() == 600
    assert frame["series"].iloc[0] == "S0000" and (frame["close"] > 0).all()
    assert (frame["date"].dt.dayofweek < 5).all()
    lengths = frame.groupby("series").size()
    assert lengths.max() == 600 and lengths.min() < 600  # some series start late
    pd.testing.assert_frame_equal(frame, synthetic_universe(40, 600, seed=7, correlation=0.4))
    assert not frame["close"].equals(synthetic_universe(40, 600, seed=8, correlation=0.4)["close"])

    prices = frame.pivot(index="date", columns="series", values="close")
    full = prices.columns[prices.notna().all()]
    returns = np.log(prices[full]).diff().dropna().to_numpy()
    pairwise = np.corrcoef(returns, rowvar=False)[np.triu_indices(len(full), 1)]
    assert pairwise.mean() == pytest.approx(0.4, abs=0.06)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(st.tuples(st.integers(0, 60), st.integers(40, 140)), min_size=2, max_size=5),
       kind=st.sampled_from(["standard", "minmax"]), seed=st.integers(0, 2**16),
       transform=st.sampled_from(["none", "log_return"]))
def test_scalers_are_each_series_own_train_rows_whatever_the_rest_holds(history, kind, seed,
                                                                        transform) -> None:
    """Every kept series' scaler is the one of its train rows (its changes under a transform),
    and stays so when every val/test value and every other series' values are redrawn."""
    frame = long_frame(history)
    rng = np.random.default_rng(seed)
    frame["close"] = rng.uniform(1.0, 100.0, len(frame))
    spec = WindowSpec(lookback=4, horizon=1)
    try:
        data = prepare_universe(frame, ["close"], ["close"], spec, FRACTIONS, scaler=kind,
                                target_transform=transform)
    except DataError:
        return  # no series long enough in every split: nothing to scale
    for sid, code in enumerate(data.series):
        own = (frame["series"] == code).to_numpy()
        train = own & (frame["date"] < data.cut_dates["val"]).to_numpy()
        levels = frame.loc[train, "close"].to_numpy()[:, None]
        np.testing.assert_allclose(data.x_centers[sid], AffineScaler.fit(kind, levels).center, rtol=1e-12)
        targets = np.diff(np.log(levels), axis=0) if transform == "log_return" else levels
        expected = AffineScaler.fit(kind, targets)
        np.testing.assert_allclose(data.y_centers[sid], expected.center, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(data.y_scales[sid], expected.scale, rtol=1e-12)

    kept = data.series[0]
    keep = ((frame["series"] == kept) & (frame["date"] < data.cut_dates["val"])).to_numpy()
    redrawn = frame.copy()
    redrawn.loc[~keep, "close"] = rng.uniform(1.0, 100.0, int((~keep).sum()))
    again = prepare_universe(redrawn, ["close"], ["close"], spec, FRACTIONS, scaler=kind,
                             target_transform=transform)
    sid = again.series.index(kept)
    for name in ("x_centers", "x_scales", "y_centers", "y_scales"):
        np.testing.assert_array_equal(getattr(again, name)[sid], getattr(data, name)[0])
