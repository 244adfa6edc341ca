"""Every validation failure is one line naming the file, the column and the value; fixable cases
(unsorted dates, exact duplicate rows, gaps with an explicit data.fill) are fixed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import load_config
from pipeline.data.datamodule import prepare_data
from pipeline.data.loading import load_data
from pipeline.data.validation import Rules, validate
from pipeline.errors import ConfigError, DataError

# data=csv as a user runs it on a small file: 3 steps in, 1 out, a 60/20/20 split.
SMALL = ["data.lookback=3", "data.horizon=1", "data.split.train=0.6", "data.split.val=0.2",
         "data.split.test=0.2"]


def csv_config(path: Path, *overrides: str):
    """The typed data config load_config builds for data=csv on this file."""
    return load_config("train", ["data=csv", f"data.params.path={path}", *SMALL, *overrides]).data


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config("train", ["data=csv", *SMALL, *overrides])
    message = str(info.value)
    assert "\n" not in message
    return message


def write_csv(tmp_path: Path, text: str, name: str = "prices.csv") -> Path:
    path = tmp_path / name
    path.write_text(text.strip() + "\n")
    return path


def fetch_error(data) -> str:
    with pytest.raises(DataError) as info:
        load_data(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_clean_file_becomes_a_sorted_float_series_indexed_by_date(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close,volume\n2024-01-03,12,5\n2024-01-02,11,4\n2024-01-04,13,6")
    result = load_data(csv_config(path, "data.inputs=[close,volume]"))
    assert list(result.frame.columns) == ["close", "volume"]
    assert result.frame.index.name == "date"
    assert result.frame.index.is_monotonic_increasing  # unsorted input is sorted
    assert result.frame["close"].tolist() == [11.0, 12.0, 13.0]
    assert result.frame.dtypes.eq(np.float64).all()
    assert not result.from_cache and result.cache_path is None  # files are read, never cached


def test_missing_path_is_a_config_error(tmp_path) -> None:
    assert config_error().startswith("data.params.path is not set")
    assert config_error("data.params.path=null").startswith("data.params.path is not set")


def test_missing_file_names_it(tmp_path) -> None:
    message = fetch_error(csv_config(tmp_path / "nope.csv"))
    assert "nope.csv: no such file" in message


def test_unreadable_file_names_it(tmp_path) -> None:
    path = tmp_path / "prices.parquet"
    path.write_bytes(b"not parquet at all")
    assert "prices.parquet: cannot read it" in fetch_error(csv_config(path))


def test_empty_file(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close")
    assert fetch_error(csv_config(path)).startswith(f"csv {path}: no rows")


def test_missing_date_column(tmp_path) -> None:
    path = write_csv(tmp_path, "day,close\n2024-01-02,1")
    message = fetch_error(csv_config(path))
    assert message.startswith(f"csv {path}: missing date column 'date'")
    assert "available: day, close" in message


def test_missing_value_column(tmp_path) -> None:
    path = write_csv(tmp_path, "date,open\n2024-01-02,1")
    message = fetch_error(csv_config(path))
    assert f"csv {path}: missing column(s) 'close'" in message and "available: open" in message


def test_unparseable_date_names_value_and_row(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-13-45,2\n2024-01-04,3")
    message = fetch_error(csv_config(path))
    assert "column 'date' has an unparseable date '2024-13-45' in data row 2" in message
    assert "data.date_format" in message


def test_empty_date_cell(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n,2")
    assert "column 'date' is empty in data row 2" in fetch_error(csv_config(path))


def test_explicit_date_format(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n03/01/2024,1\n04/01/2024,2")
    frame = load_data(csv_config(path, "data.date_format='%d/%m/%Y'")).frame
    assert list(frame.index) == [pd.Timestamp("2024-01-03"), pd.Timestamp("2024-01-04")]


def test_identical_duplicate_rows_are_dropped(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-01-02,1\n2024-01-03,2")
    assert load_data(csv_config(path)).frame["close"].tolist() == [1.0, 2.0]


def test_duplicate_dates_with_different_values(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-01-03,2\n2024-01-03,2.5")
    message = fetch_error(csv_config(path))
    assert message == (f"csv {path}: 2024-01-03 appears 2 times with different 'close' values "
                       "(2.0, 2.5); remove the duplicates")


def test_non_numeric_value(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-01-03,abc")
    assert "column 'close' has a non-numeric value 'abc' at 2024-01-03" in fetch_error(csv_config(path))


def test_nan_fails_without_an_explicit_fill(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-01-03,\n2024-01-04,\n2024-01-05,4")
    message = fetch_error(csv_config(path))
    assert "column 'close' has 2 NaN value(s), the first at 2024-01-03" in message
    assert "data.fill=ffill or data.fill=interpolate" in message


def test_inf_fails(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-01-03,inf")
    assert "column 'close' has 1 infinite value(s), the first at 2024-01-03" in fetch_error(csv_config(path))


@pytest.mark.parametrize("fill,expected", [("ffill", [1.0, 1.0, 1.0, 4.0]),
                                           ("interpolate", [1.0, 2.0, 3.0, 4.0])])
def test_gaps_are_filled_when_asked(tmp_path, fill, expected) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1\n2024-01-03,\n2024-01-04,\n2024-01-05,4")
    assert load_data(csv_config(path, f"data.fill={fill}")).frame["close"].tolist() == expected


def test_a_gap_at_the_start_cannot_be_forward_filled(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,\n2024-01-03,2")
    message = fetch_error(csv_config(path, "data.fill=ffill"))
    assert "column 'close' has 1 NaN value(s), the first at 2024-01-02" in message
    assert "data.fill=ffill cannot fill gaps at the start" in message


def test_unknown_fill_is_a_config_error(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,1")
    assert config_error(f"data.params.path={path}", "data.fill=zero").startswith("data.fill='zero'")


def test_non_positive_price(tmp_path) -> None:
    path = write_csv(tmp_path, "date,close\n2024-01-02,10\n2024-01-03,0")
    message = fetch_error(csv_config(path, "data.positive=true"))
    assert "column 'close' has a non-positive price 0.0 at 2024-01-03" in message
    # Without the rule, zero is a valid value.
    assert load_data(csv_config(path)).frame["close"].tolist() == [10.0, 0.0]


def test_series_too_short_for_lookback_horizon_and_split(tmp_path) -> None:
    dates = pd.date_range("2024-01-01", periods=12)
    pd.DataFrame({"date": dates, "close": np.arange(1.0, 13.0)}).to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(DataError) as info:
        prepare_data(csv_config(tmp_path / "p.csv", "data.lookback=5"))
    assert str(info.value).startswith(f"csv {tmp_path / 'p.csv'}: the val split has 2 rows but one "
                                      "sample needs 6")


def test_samples_layout_rejects_ragged_and_repeated_samples() -> None:
    rules = Rules(label="unit", columns=["x"], layout="samples")
    good = pd.DataFrame({"sample": [0, 0, 1, 1], "step": [0, 1, 0, 1], "split": "train",
                         "x": [1.0, 2.0, 3.0, 4.0]})
    assert validate(good, rules).index.name == "sample_row"
    with pytest.raises(DataError, match=r"unit: sample 1 has steps \[0\]; every sample needs steps 0..1"):
        validate(good.iloc[:3], rules)
    with pytest.raises(DataError, match="unit: sample 0 step 1 appears more than once"):
        validate(pd.concat([good, good.iloc[[1]]]), rules)
    mixed = good.assign(split=["train", "test", "test", "test"])
    with pytest.raises(DataError, match="unit: sample 0 is in more than one split"):
        validate(mixed, rules)
