"""The stock source through tushare, without a network.

The pro API is faked at our seam (pipeline.data.sources.tushare_prices.connect) by an object whose
query() answers like tushare's DataApi.query: a frame with tushare's columns, trade_date as
'YYYYMMDD' strings, newest day first. The real DataApi is also driven with requests.post patched,
and the legacy get_k_data (data.params.api=legacy) runs for real with sockets blocked. The
baostock path is in tests/test_data_baostock.py.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline.cli import load_config
from pipeline.data.loading import load_data
from pipeline.data.sources import tushare_prices
from pipeline.errors import ConfigError, DataError, DataUnavailable

TOKEN = "fake-token-5f3a9c1e77d2"
COLUMNS = ["ts_code", "trade_date", "open", "high", "low", "close", "pre_close", "change",
           "pct_chg", "vol", "amount"]


def tushare_reply(ts_code: str = "000001.SH", start: str = "2019-01-02", days: int = 60) -> pd.DataFrame:
    """Daily bars shaped like tushare's index_daily/daily reply (newest first)."""
    dates = pd.bdate_range(start, periods=days)
    close = 2500.0 + 10 * np.sin(np.arange(days) / 5) + np.arange(days)
    pre_close = np.concatenate([[close[0] - 1.0], close[:-1]])
    frame = pd.DataFrame({
        "ts_code": ts_code, "trade_date": dates.strftime("%Y%m%d"), "open": close - 2.0,
        "high": close + 8.0, "low": close - 9.0, "close": close, "pre_close": pre_close,
        "change": close - pre_close, "pct_chg": (close - pre_close) / pre_close * 100,
        "vol": 2.1e8 + np.arange(days) * 1e6, "amount": 2.4e8 + np.arange(days) * 1e6,
    }, columns=COLUMNS)
    return frame.iloc[::-1].reset_index(drop=True)


class FakeProApi:
    """Records calls; answers from `bars` within the requested dates, at most `limit` rows."""

    def __init__(self, bars: pd.DataFrame | None = None, error: Exception | None = None,
                 limit: int = 8000) -> None:
        self.bars = tushare_reply() if bars is None else bars
        self.error = error
        self.limit = limit
        self.calls: list[tuple[str, dict]] = []

    def query(self, api_name: str, fields: str = "", **kwargs) -> pd.DataFrame:
        self.calls.append((api_name, kwargs))
        if self.error is not None:
            raise self.error
        dates = self.bars["trade_date"]
        inside = (dates >= kwargs["start_date"]) & (dates <= kwargs["end_date"])
        return self.bars[inside].head(self.limit).reset_index(drop=True)


@pytest.fixture
def pro_api(monkeypatch) -> FakeProApi:
    fake = FakeProApi()
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setattr(tushare_prices, "connect", lambda token, timeout: fake)
    return fake


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Every socket connection attempt is recorded and refused."""
    attempts: list = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network blocked in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def stock_config(tmp_path, *overrides: str):
    return load_config("train", ["data=stock", f"data.cache_dir={tmp_path / 'cache'}",
                                 "data.params.end=2019-03-29", *overrides]).data


def config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config("train", ["data=stock", *overrides])
    return one_line(info)


def params(**given) -> dict:
    """Stock params as load_config hands them to the source: the schema's defaults filled in."""
    from pipeline.config import source_params

    return source_params("stock", given)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_pro_index_bars_are_renamed_parsed_and_sorted(tmp_path, pro_api) -> None:
    result = load_data(stock_config(tmp_path, "data.inputs=[open,high,low,close,volume]"))
    assert pro_api.calls == [("index_daily", {"ts_code": "000001.SH", "start_date": "20190101",
                                              "end_date": "20190329"})]
    frame = result.frame
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.name == "date"
    assert frame.index.is_monotonic_increasing and frame.index[0] == pd.Timestamp("2019-01-02")
    assert len(frame) == 60 and frame.dtypes.eq(np.float64).all()
    expected = pro_api.bars.set_index("trade_date")["close"].loc[frame.index[-1].strftime("%Y%m%d")]
    assert frame["close"].iloc[-1] == expected
    assert not result.from_cache and result.cache_path.is_file()


def test_a_stock_code_goes_to_daily_with_its_exchange(tmp_path, pro_api) -> None:
    load_data(stock_config(tmp_path, "data.params.code='600519'", "data.params.index=false"))
    assert pro_api.calls[0][0] == "daily" and pro_api.calls[0][1]["ts_code"] == "600519.SH"


def test_codes_from_the_command_line_and_exchanges() -> None:
    assert tushare_prices.bar_request(params(code="000001", index=True)).ts_code == "000001.SH"
    assert tushare_prices.exchange_code("000001", index=False) == "000001.SZ"
    assert tushare_prices.exchange_code("399001", index=True) == "399001.SZ"
    # From the command line, 000001 stays text (Hydra does not read leading zeros as a number);
    # a code that did become a number (YAML's 000001 is 1) is refused with the quoting to use.
    assert load_config("train", ["data=stock", "data.params.code=000001"]).data.params["code"] == "000001"
    assert config_error("data.params.code=1").startswith(
        "data.params.code=1: a stock code is six digits as text; quote it, "
        "e.g. data.params.code=\"'000001'\"")
    assert config_error("data.params.code='12345'").startswith(
        "data.params.code='12345': must be a six-digit code")
    assert config_error("data.params.start=2020-01-01", "data.params.end=2019-01-01").startswith(
        "data.params.start='2020-01-01': must not be after")
    # An open end is today when the fetch runs, so the source still checks a future start itself.
    with pytest.raises(ConfigError, match=r"data.params.start=2999-01-01: must not be after"):
        tushare_prices.bar_request(params(start="2999-01-01", end=None))


def test_long_ranges_are_fetched_page_by_page(tmp_path, pro_api) -> None:
    pro_api.limit = 25  # tushare caps rows per call; a full page means "ask for older rows"
    result = load_data(stock_config(tmp_path, "data.params.page_rows=25"))
    assert len(pro_api.calls) == 3  # 25 + 25 + 10 rows
    days = pd.bdate_range("2019-01-02", periods=60)
    day_before = [f"{days[first] - pd.Timedelta(days=1):%Y%m%d}" for first in (35, 10)]
    assert [kwargs["end_date"] for _, kwargs in pro_api.calls[1:]] == day_before
    assert len(result.frame) == 60 and result.frame.index.is_unique


def test_an_empty_reply_is_an_error(tmp_path, pro_api) -> None:
    pro_api.bars = pro_api.bars.iloc[0:0]
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path))
    message = one_line(info)
    assert message.startswith("stock 000001.SH 2019-01-01..2019-03-29: tushare's index_daily "
                              "returned no rows")
    assert "no cache at" in message


def test_an_api_error_is_one_line_without_the_token(tmp_path, pro_api) -> None:
    pro_api.error = Exception(f"token {TOKEN} 不对\n请确认")
    with pytest.raises(DataError) as info:
        load_data(stock_config(tmp_path))
    message = one_line(info)
    assert TOKEN not in message
    assert message.startswith("stock 000001.SH 2019-01-01..2019-03-29: the tushare pro API refused "
                              "index_daily: token <redacted> 不对 请确认; check that TUSHARE_TOKEN")
    assert not isinstance(info.value, DataUnavailable)  # a refused token is not a missing network
    assert not (tmp_path / "cache").exists()


def test_no_network_falls_back_to_the_cache(tmp_path, pro_api) -> None:
    good = load_data(stock_config(tmp_path))
    pro_api.error = requests.ConnectionError("Max retries exceeded")
    stale = load_data(stock_config(tmp_path, "data.refresh=true"))
    assert stale.from_cache and stale.digest == good.digest
    assert "cannot reach the tushare pro API (ConnectionError)" in stale.notice


def test_no_network_and_no_cache(tmp_path, pro_api) -> None:
    pro_api.error = requests.ConnectionError("Max retries exceeded")
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path))
    message = one_line(info)
    assert message.startswith("stock 000001.SH 2019-01-01..2019-03-29: cannot reach the tushare "
                              "pro API (ConnectionError); check the network; no cache at ")
    for fix in ("set TUSHARE_TOKEN", 'make fetch ARGS="data=stock"', "data=csv"):
        assert fix in message


def test_the_token_never_reaches_the_manifest_or_the_frame(tmp_path, pro_api) -> None:
    result = load_data(stock_config(tmp_path))
    for path in (tmp_path / "cache").iterdir():
        assert TOKEN.encode() not in path.read_bytes()
    assert TOKEN not in json.dumps(dict(result.manifest), default=str)
    assert not result.frame.astype(str).apply(lambda c: c.str.contains(TOKEN)).any().any()


def test_a_token_in_the_config_stays_out_of_the_cache(tmp_path, pro_api) -> None:
    # The schema refuses it on the command line, without echoing the value...
    message = config_error(f"+data.params.token={TOKEN}")
    assert message.startswith("data.params.token: data=stock has no such parameter")
    assert TOKEN not in message
    # ...and a caller that builds the params itself still never gets it into the cache.
    data = stock_config(tmp_path)
    data.params["token"] = TOKEN
    result = load_data(data)
    assert result.manifest["params"]["token"] == "<redacted>"
    for path in (tmp_path / "cache").iterdir():
        assert TOKEN.encode() not in path.read_bytes()


def test_non_positive_prices_are_rejected_and_not_cached(tmp_path, pro_api) -> None:
    pro_api.bars.loc[3, "close"] = 0.0
    with pytest.raises(DataError) as info:
        load_data(stock_config(tmp_path))
    day = pd.Timestamp(pro_api.bars.loc[3, "trade_date"])
    assert f"column 'close' has a non-positive price 0.0 at {day:%Y-%m-%d}" in one_line(info)
    assert not isinstance(info.value, DataUnavailable)  # a bad reply fails; it is not "offline"
    assert not (tmp_path / "cache").exists()


def test_the_real_client_without_network_is_unreachable(tmp_path, monkeypatch) -> None:
    import tushare.pro.client as client

    def post(url, json=None, timeout=None):
        assert TOKEN == json["token"]  # the token goes to tushare's client, nowhere else
        raise requests.ConnectionError("Failed to establish a new connection")

    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setattr(client.requests, "post", post)
    with pytest.raises(DataUnavailable, match=r"cannot reach the tushare pro API \(ConnectionError\)"):
        load_data(stock_config(tmp_path))


def test_the_real_client_on_an_http_error_returns_nothing_which_is_an_error(tmp_path, monkeypatch) -> None:
    import tushare.pro.client as client

    failed = requests.Response()
    failed.status_code = 502
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setattr(client.requests, "post", lambda *a, **k: failed)
    with pytest.raises(DataUnavailable, match="tushare's index_daily returned no rows"):
        load_data(stock_config(tmp_path))


def test_legacy_get_k_data_fails_on_pandas_2_before_any_request(no_network) -> None:
    """The premise of our one-line error: the real call dies on DataFrame.append, offline."""
    import tushare

    assert int(pd.__version__.split(".")[0]) >= 2
    with pytest.raises(AttributeError, match="append"):
        tushare.get_k_data("000001", start="2019-01-01", end="2019-03-29", index=True, autype=None)
    assert no_network == []


def test_legacy_path_is_one_line_naming_the_cause_and_the_fixes(tmp_path, monkeypatch, no_network,
                                                                capsys) -> None:
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path, "data.params.api=legacy"))  # auto now means baostock
    message = one_line(info)
    assert message.startswith("stock 000001.SH: tushare's legacy get_k_data (data.params.api=legacy) "
                              f"cannot run with pandas {pd.__version__}: "
                              "it calls DataFrame.append, removed in pandas 2")
    assert "set TUSHARE_TOKEN" in message and "data=csv" in message
    assert no_network == [] and capsys.readouterr().out == ""  # tushare's prints are swallowed


def test_pro_without_a_token_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path, "data.params.api=pro"))
    assert one_line(info).startswith("stock 000001.SH: data.params.api=pro needs TUSHARE_TOKEN")
