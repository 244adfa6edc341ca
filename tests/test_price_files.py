"""Price files as users have them (issue 11): a NetEase or broker export read through data=csv
with no preparation: GBK bytes, newest row first, Chinese headers, codes written as '000001,
numbers with thousands separators quoted like "3,245.67". Every file is generated here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import load_config
from pipeline.data.datamodule import prepare_data
from pipeline.data.loading import load_data
from pipeline.data.sources.files import read_table
from pipeline.errors import ConfigError, DataError
from tests.conftest import run_cli

HEADER = ["日期", "股票代码", "名称", "收盘价", "最高价", "最低价", "开盘价", "成交量"]
CLOSE = "收盘价"
# The one setting a user adds for such a file: which columns (quoted: they are not ASCII).
COLUMNS = ["data.date_column='日期'", f"data.inputs=['{CLOSE}']", f"data.targets=['{CLOSE}']"]


def prices(days: int = 60) -> pd.DataFrame:
    """Daily bars of an index near 3,200 points, oldest first; one close is exactly 3245.67."""
    steps = np.arange(days)
    close = np.round(3180.0 + 1.5 * steps + 10 * np.sin(steps / 4), 2)
    close[days // 3] = 3245.67
    return pd.DataFrame({
        "date": pd.bdate_range("2024-01-02", periods=days), "close": close,
        "high": close + 8.25, "low": close - 9.5, "open": close - 2.0,
        "volume": 250_000_000 + steps * 1_234_567,
    })


def export_text(bars: pd.DataFrame) -> str:
    """The bars as an export writes them: newest first, '000001, quoted "3,245.67"."""
    lines = [",".join(HEADER)]
    for bar in bars.iloc[::-1].itertuples():
        numbers = [f'"{value:,.2f}"' for value in (bar.close, bar.high, bar.low, bar.open)]
        lines.append(",".join([f"{bar.date:%Y-%m-%d}", "'000001", "上证指数", *numbers,
                               f'"{bar.volume:,}"']))
    return "\n".join(lines) + "\n"


def write_export(tmp_path: Path, bars: pd.DataFrame | None = None, encoding: str = "gbk",
                 name: str = "sh000001.csv", text: str | None = None) -> Path:
    path = tmp_path / name
    path.write_bytes((export_text(prices() if bars is None else bars) if text is None else text)
                     .encode(encoding))
    return path


def price_config(path: Path, *overrides: str):
    """The typed data config of `make train ARGS="data=csv data.params.path=<file> ..."`."""
    return load_config("train", ["data=csv", f"data.params.path={path}", *COLUMNS, *overrides]).data


def load_error(path: Path, *overrides: str) -> str:
    """The one-line DataError loading this file gives; it names the file."""
    with pytest.raises(DataError) as info:
        load_data(price_config(path, *overrides))
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --- what loads -----------------------------------------------------------------------------------


def test_a_gbk_export_loads_oldest_first_with_float_prices(tmp_path) -> None:
    bars = prices()
    path = write_export(tmp_path, bars)
    assert export_text(bars).splitlines()[1].startswith(
        f"{bars.date.iloc[-1]:%Y-%m-%d},'000001,上证指数,\"3,")  # the file really is newest first
    frame = load_data(price_config(path)).frame
    assert list(frame.columns) == [CLOSE] and frame.index.name == "日期"
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.is_monotonic_increasing
    assert (frame.index == pd.DatetimeIndex(bars["date"])).all()
    assert frame[CLOSE].dtype == np.float64
    assert frame[CLOSE].iloc[len(bars) // 3] == 3245.67  # "3,245.67" became the number
    np.testing.assert_array_equal(frame[CLOSE].to_numpy(), bars["close"].to_numpy())


def test_thousands_separators_and_quoted_codes_are_parsed(tmp_path) -> None:
    bars = prices()
    path = write_export(tmp_path, bars)
    frame = load_data(price_config(path, f"data.inputs=['{CLOSE}','成交量','开盘价']")).frame
    np.testing.assert_array_equal(frame["成交量"].to_numpy(), bars["volume"].to_numpy(np.float64))
    np.testing.assert_allclose(frame["开盘价"].to_numpy(), bars["open"].to_numpy())
    raw = read_table(price_config(path).params)  # the source's frame, before validation
    assert raw["股票代码"].tolist() == ["000001"] * len(bars)  # the leading quote is not data
    assert raw["名称"].iloc[0] == "上证指数"


def test_utf8_and_parquet_copies_of_the_same_data_give_the_same_frame(tmp_path) -> None:
    bars = prices()
    gbk = load_data(price_config(write_export(tmp_path, bars)))
    utf8 = load_data(price_config(write_export(tmp_path, bars, "utf-8", name="utf8.csv")))
    # Excel's "CSV UTF-8" starts with a BOM: detected, or read as plain utf-8, it is not a header.
    bom_path = write_export(tmp_path, bars, "utf-8-sig", name="excel.csv")
    excel = load_data(price_config(bom_path))
    excel_utf8 = load_data(price_config(bom_path, "data.params.encoding=utf-8"))
    table = pd.DataFrame({"日期": bars["date"], "股票代码": "000001", "名称": "上证指数",
                          CLOSE: bars["close"], "成交量": bars["volume"]}).iloc[::-1]
    table.to_parquet(tmp_path / "sh.parquet", index=False)
    parquet = load_data(price_config(tmp_path / "sh.parquet"))
    for other in (utf8, excel, excel_utf8, parquet):
        pd.testing.assert_frame_equal(other.frame, gbk.frame)
        assert other.digest == gbk.digest  # the same dataset identity in MLflow


def test_a_gbk_file_whose_only_chinese_is_its_headers_is_detected(tmp_path) -> None:
    # charset-normalizer alone calls this Big5, and then 日期 is not a column.
    bars = prices(40)
    text = "日期,收盘价\n" + "".join(f'{d:%Y-%m-%d},"{c:,.2f}"\n'
                                   for d, c in zip(bars["date"], bars["close"], strict=True))
    frame = load_data(price_config(write_export(tmp_path, text=text))).frame
    np.testing.assert_array_equal(frame[CLOSE].to_numpy(), bars["close"].to_numpy())


def test_a_netease_export_with_all_its_columns_is_detected(tmp_path) -> None:
    # NetEase's full header and a stock name: charset-normalizer alone calls this ptcp154.
    header = "日期,股票代码,名称,收盘价,最高价,最低价,开盘价,前收盘,涨跌额,涨跌幅,换手率,成交量,成交金额"
    days = pd.bdate_range("2024-01-02", periods=30)[::-1]
    rows = [f"{d:%Y-%m-%d},'600519,贵州茅台,{1700 + i}.5,1710.0,1690.0,1695.0,1698.0,2.0,0.12,0.3,"
            f"2000000,3400000000" for i, d in enumerate(days)]
    path = write_export(tmp_path, text="\n".join([header, *rows]) + "\n")
    frame = load_data(price_config(path)).frame
    assert frame[CLOSE].iloc[-1] == 1700.5 and frame[CLOSE].iloc[0] == 1729.5


def test_an_explicit_encoding_is_used(tmp_path) -> None:
    path = write_export(tmp_path)
    detected = load_data(price_config(path)).frame
    for name in ("gbk", "gb18030"):
        given = load_data(price_config(path, f"data.params.encoding={name}")).frame
        pd.testing.assert_frame_equal(given, detected)


def test_a_param_the_yaml_leaves_out_is_set_like_any_other(tmp_path) -> None:
    assert price_config(write_export(tmp_path), "data.params.encoding=gbk").params["encoding"] == "gbk"


# --- what fails, in one line ----------------------------------------------------------------------


def test_a_wrong_explicit_encoding_names_the_file_the_encoding_and_the_fix(tmp_path) -> None:
    path = write_export(tmp_path)
    message = load_error(path, "data.params.encoding=utf-8")
    assert message.startswith(f"csv {path}: not valid utf-8 (set in data.params.encoding) at byte ")
    assert message.endswith("it reads as gb18030: set data.params.encoding=gb18030, or "
                            "data.params.encoding=null to detect it")


def test_an_unknown_encoding_name_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError) as info:
        price_config(write_export(tmp_path), "data.params.encoding=klingon")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("data.params.encoding='klingon': unknown encoding; e.g. utf-8, gbk")


def test_a_binary_file(tmp_path) -> None:
    path = tmp_path / "sh000001.csv"
    path.write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4)  # an .xlsx, renamed
    assert "looks like a binary file" in load_error(path)
    assert "looks like a binary file" in load_error(path, "data.params.encoding=gbk")


def test_an_empty_file(tmp_path) -> None:
    path = write_export(tmp_path, text="")
    assert load_error(path) == (f"csv {path}: the file is empty; export the data again (a header "
                                "row, then one row per date)")


def test_a_file_with_headers_only(tmp_path) -> None:
    path = write_export(tmp_path, text=",".join(HEADER) + "\n")
    assert load_error(path).startswith(f"csv {path}: no rows")


def test_a_duplicate_date_with_different_values(tmp_path) -> None:
    bars = prices()
    twice = pd.concat([bars, bars.iloc[[5]].assign(close=3300.5)], ignore_index=True)
    path = write_export(tmp_path, twice)
    day = bars["date"].iloc[5]
    # In file order: the export is newest first, so the appended row comes first.
    assert load_error(path) == (f"csv {path}: {day:%Y-%m-%d} appears 2 times with different "
                                f"'{CLOSE}' values (3300.5, {float(bars['close'].iloc[5])}); "
                                "remove the duplicates")


def test_a_missing_price(tmp_path) -> None:
    bars = prices()
    text = export_text(bars).replace(f'"{bars["close"].iloc[7]:,.2f}"', "", 1)
    path = write_export(tmp_path, text=text)
    message = load_error(path)
    assert f"column '{CLOSE}' has 1 NaN value(s), the first at {bars['date'].iloc[7]:%Y-%m-%d}" in message
    assert "data.fill=ffill or data.fill=interpolate" in message


def test_a_negative_price_when_prices_must_be_positive(tmp_path) -> None:
    bars = prices()
    bars.loc[9, "close"] = -bars.loc[9, "close"]
    path = write_export(tmp_path, bars)
    message = load_error(path, "data.positive=true")
    assert (f"column '{CLOSE}' has a non-positive price {bars.loc[9, 'close']} at "
            f"{bars['date'].iloc[9]:%Y-%m-%d}") in message


def test_a_non_numeric_price(tmp_path) -> None:
    bars = prices()
    text = export_text(bars).replace(f'"{bars["close"].iloc[3]:,.2f}"', "停牌", 1)  # suspended
    message = load_error(write_export(tmp_path, text=text))
    assert f"column '{CLOSE}' has a non-numeric value '停牌' at {bars['date'].iloc[3]:%Y-%m-%d}" in message


def test_too_few_rows_for_the_split(tmp_path) -> None:
    path = write_export(tmp_path, prices(12))
    with pytest.raises(DataError) as info:
        prepare_data(price_config(path, "data.lookback=5"))
    assert str(info.value) == (f"csv {path}: the val split has 2 rows but one sample needs 6 "
                               "(lookback 5 + horizon 1); use a longer series, a shorter lookback "
                               "or another data.split")


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_on_a_gbk_export_from_the_command_line(tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    path = write_export(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_cli(["data=csv", f"data.params.path={path}", *COLUMNS, "data.lookback=5",
                    "trainer.max_epochs=2", "trainer.progress_bar=false",
                    "trainer.model_summary=false", "model.hidden_size=8"],
                   cwd=work, env_extra={"MLFLOW_TRACKING_URI": uri})
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sh000001")  # named after the file
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # The run trained on exactly the data this file loads to.
    assert runs[0].data.tags["data_digest"] == load_data(price_config(path)).digest
