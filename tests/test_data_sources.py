"""The offline sources (toy, binary_add, sst, sst_synthetic), the samples layout, date splits,
and the fetch command."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import load_config
from pipeline.data.datamodule import SeriesDataModule, build_datamodule, prepare_data
from pipeline.data.loading import load_data
from pipeline.data.windowing import date_split_bounds
from pipeline.errors import ConfigError
from pipeline.tracking.datasets import dataset_for_mlflow
from tests.conftest import run_cli


def data_config(name: str, tmp_path=None, *overrides: str):
    cache = [f"data.cache_dir={tmp_path / 'cache'}"] if tmp_path is not None else []
    return load_config("train", [f"data={name}", *cache, *overrides]).data


def config_error(*overrides: str) -> str:
    """The one-line ConfigError load_config gives for these overrides."""
    with pytest.raises(ConfigError) as info:
        load_config("train", list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def raw_targets(prepared, split: str) -> np.ndarray:
    return prepared.y_scaler.inverse(prepared.windows[split].y.reshape(-1, len(prepared.targets)))


def test_toy_samples_and_splits() -> None:
    prepared = prepare_data(data_config("toy"))
    train, val, test = (prepared.windows[s] for s in ("train", "val", "test"))
    assert train.x.shape == (4, 3, 1) and train.y.shape == (4, 1, 1)
    assert test.x.shape == (2, 3, 1) and test.y.shape == (2, 1, 1)
    np.testing.assert_allclose(raw_targets(prepared, "train").ravel(), [6, 8, 7, 5])
    np.testing.assert_allclose(raw_targets(prepared, "test").ravel(), [7, 9])
    np.testing.assert_array_equal(val.rows, test.rows)  # no more data: val reuses the test rows
    inputs = prepared.x_scaler.inverse(test.x.reshape(-1, 1)).reshape(2, 3)
    np.testing.assert_allclose(inputs, [[1, 2, 4], [1, 3, 5]])
    # rows put every target back in the frame: the last step of its sample
    np.testing.assert_allclose(prepared.frame["sum"].to_numpy()[test.rows.ravel()], [7, 9])
    assert (prepared.frame["step"].to_numpy()[train.rows.ravel()] == 2).all()
    # the scaler saw the training samples only
    assert prepared.y_scaler.center[0] == pytest.approx(6.5)


def test_toy_datamodule_serves_the_samples() -> None:
    dm = build_datamodule(data_config("toy"))
    assert isinstance(dm, SeriesDataModule)
    x, y = next(iter(dm.test_dataloader()))
    assert tuple(x.shape) == (2, 3, 1) and tuple(y.shape) == (2, 1, 1)


def decode(bits: np.ndarray) -> np.ndarray:
    """(N, steps) bits, least significant first -> integers."""
    return (bits.astype(np.int64) << np.arange(bits.shape[1])).sum(axis=1)


def test_binary_addition_samples() -> None:
    prepared = prepare_data(data_config("binary_add"))
    train, val, test = (prepared.windows[s] for s in ("train", "val", "test"))
    assert train.x.shape == (2000, 8, 2) and train.y.shape == (2000, 8, 1)
    assert val.x.shape == (200, 8, 2) and test.y.shape == (200, 8, 1)
    for windows in (train, val, test):
        assert set(np.unique(windows.x)) <= {0.0, 1.0}  # scaler none: bits stay bits
        a, b, total = decode(windows.x[..., 0]), decode(windows.x[..., 1]), decode(windows.y[..., 0])
        np.testing.assert_array_equal(a + b, total)
    pairs = {split: {frozenset((int(a), int(b))) if a != b else frozenset((int(a),))
                     for a, b in zip(decode(w.x[..., 0]), decode(w.x[..., 1]), strict=True)}
             for split, w in (("train", train), ("val", val), ("test", test))}
    assert len(pairs["train"]) == 2000  # distinct, in either order
    assert not pairs["train"] & pairs["test"] and not pairs["train"] & pairs["val"]
    assert not pairs["val"] & pairs["test"]


def test_binary_addition_is_reproducible_from_its_seed() -> None:
    first, again = (load_data(data_config("binary_add")) for _ in range(2))
    assert first.digest == again.digest
    other = load_data(data_config("binary_add", None, "data.params.seed=1"))
    assert other.digest != first.digest


def test_samples_splits_name_labels_not_fractions() -> None:
    message = config_error("data=toy", "data.split.val=0.5")
    assert message.startswith("data.split.val=0.5: with layout=samples each split names")


def test_samples_lookback_must_match_their_steps() -> None:
    with pytest.raises(ConfigError, match=r"data.lookback=5: must equal the 3 steps"):
        prepare_data(data_config("toy", None, "data.lookback=5"))


def test_sst_from_statsmodels_is_monthly_1950_to_2010(tmp_path) -> None:
    result = load_data(data_config("sst", tmp_path))
    frame = result.frame
    assert len(frame) == 732 and list(frame.columns) == ["sst"]
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.is_monotonic_increasing
    assert frame.index[0] == pd.Timestamp("1950-01-01") and frame.index[-1] == pd.Timestamp("2010-12-01")
    assert (frame.index == pd.date_range("1950-01-01", periods=732, freq="MS")).all()
    # the wide YEAR x month table, read row by row: January and February 1950
    assert frame["sst"].iloc[:2].tolist() == [23.11, 24.2]
    assert result.cache_path.is_file() and not result.from_cache
    assert load_data(data_config("sst", tmp_path)).from_cache


def test_sst_is_split_by_date(tmp_path) -> None:
    prepared = prepare_data(data_config("sst", tmp_path))
    assert prepared.bounds == {"train": (0, 516), "val": (516, 624), "test": (624, 732)}
    last_train_target = prepared.frame.index[prepared.windows["train"].rows.max()]
    first_test_input = prepared.frame.index[prepared.bounds["test"][0]]
    assert last_train_target == pd.Timestamp("1992-12-01")
    assert first_test_input == pd.Timestamp("2002-01-01")
    assert prepared.windows["train"].y.shape[1:] == (12, 1)


def test_date_split_errors() -> None:
    dates = pd.date_range("2020-01-01", periods=10)
    assert date_split_bounds(dates, "2020-01-05", "2020-01-07") == {
        "train": (0, 5), "val": (5, 7), "test": (7, 10)}
    with pytest.raises(ConfigError, match=r"data.split.train_end='2020-01-05': splitting by date "
                                          r"needs a dated series"):
        date_split_bounds(pd.RangeIndex(10), "2020-01-05", "2020-01-07")
    # What the config alone can tell is refused by load_config, before any data is read.
    message = config_error("data=sst", "data.split.train_end=2020-01-05", "data.split.val_end=soon")
    assert message.startswith("data.split.val_end='soon': must be a date")
    message = config_error("data=sst", "data.split.train_end=2020-01-05",
                           "data.split.val_end=2020-01-02")
    assert message.startswith("data.split.val_end='2020-01-02': must be after")


def test_synthetic_sst_has_one_column_per_region_and_several_targets_work() -> None:
    cfg = data_config("sst_synthetic", None, "data.targets=[nino3,nino34]")
    prepared = prepare_data(cfg)
    assert list(prepared.frame.columns) == ["nino12", "nino3", "nino34", "nino4"]
    assert len(prepared.frame) == 1200 and prepared.frame.index.freqstr in (None, "MS")
    assert prepared.windows["train"].x.shape[1:] == (24, 4)
    assert prepared.windows["train"].y.shape[1:] == (12, 2)
    # one shared oscillation: the regions move together
    assert prepared.frame.diff(12).corr().loc["nino12", "nino4"] > 0.3


def test_dataset_for_mlflow_carries_the_digest(tmp_path) -> None:
    fetched = load_data(data_config("sst", tmp_path))
    dataset = dataset_for_mlflow(fetched)
    assert dataset.digest == fetched.digest and dataset.name == f"sst-{fetched.digest}"
    assert len(dataset.df) == 732
    assert str(fetched.cache_path.resolve()) in dataset.source.to_json()
    prepared = prepare_data(data_config("sst", tmp_path))
    assert dataset_for_mlflow(prepared).digest == fetched.digest


@pytest.mark.slow
def test_fetch_command_prints_one_summary_line_and_caches(tmp_path) -> None:
    done = run_cli(["data=sst"], cwd=tmp_path, module="pipeline.fetch", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("data=sst source=sst: 732 rows 1950-01-01..2010-12-01  digest ")
    assert line.endswith("(fetched now)") and "cache data_cache/sst-" in line
    files = sorted(p.suffix for p in (tmp_path / "data_cache").iterdir())
    assert files == [".json", ".parquet"]  # the manifest and its data file, no temporary files
    again = run_cli(["data=sst"], cwd=tmp_path, module="pipeline.fetch", timeout=120)
    assert "(from cache, fetched " in again.stdout


@pytest.mark.slow
def test_fetch_command_fails_in_one_line_and_writes_nothing(tmp_path) -> None:
    env = {"TUSHARE_TOKEN": "", "PIPELINE_DATA_CACHE": "data_cache"}
    # The legacy API fails before any request (pandas >= 2): one line with no network involved.
    done = run_cli(["data=stock", "data.params.api=legacy"], cwd=tmp_path, module="pipeline.fetch",
                   env_extra=env, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stock 000001.SH: tushare's legacy get_k_data")
    assert list(tmp_path.iterdir()) == []


def test_sine_target_noise_has_its_sd_and_leaves_the_noise_free_series_as_it_was(tmp_path) -> None:
    clean = load_data(data_config("sine", tmp_path, "data.params.points=4000")).frame
    noisy = load_data(data_config("sine", tmp_path, "data.params.points=4000",
                                  "data.params.target_noise=0.1")).frame
    np.testing.assert_array_equal(noisy["sin"], clean["sin"])  # the input is untouched
    np.testing.assert_allclose(clean["cos"], np.cos(clean.index.to_numpy()))
    assert np.std(noisy["cos"] - clean["cos"]) == pytest.approx(0.1, rel=0.05)
    assert "data.params.target_noise" in config_error("data=sine", "data.params.target_noise=-1")
