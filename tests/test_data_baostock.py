"""The stock source through baostock, without a network.

baostock is faked at our seam (pipeline.data.sources.baostock_prices.connect) by an object whose
replies have baostock's recorded shape: a ResultData with error_code ('0' = ok), error_msg,
fields, and rows read with `while rs.next(): rs.get_row_data()`, every value a string, oldest
day first. The real baostock client is also driven with every socket connection refused.
"""

from __future__ import annotations

import logging
import socket

import numpy as np
import pandas as pd
import pytest

from pipeline.data.loading import load_data
from pipeline.data.sources import SourceUnavailable, baostock_prices, tushare_prices
from pipeline.data.sources.bars import BarRequest
from pipeline.errors import ConfigError, DataError, DataUnavailable
from tests import test_data_tushare as tushare_tests
from tests.test_data_tushare import one_line, params, stock_config, tushare_reply

# The tushare tests' fixtures, bound here so pytest finds them by name in this module.
no_network = tushare_tests.no_network
pro_api = tushare_tests.pro_api

FIELDS = "date,open,high,low,close,volume"
SOURCE_LOG = "pipeline.data.sources.tushare_prices"


def baostock_rows(start: str = "2019-01-02", days: int = 60) -> list[list[str]]:
    """Daily bars as baostock sends them: strings, prices to 4 decimals, volume in shares."""
    close = 2500.0 + 10 * np.sin(np.arange(days) / 5) + np.arange(days)
    return [[f"{day:%Y-%m-%d}", f"{c - 2:.4f}", f"{c + 8:.4f}", f"{c - 9:.4f}", f"{c:.4f}",
             str(21_000_000_000 + i * 100_000_000)]
            for i, (day, c) in enumerate(zip(pd.bdate_range(start, periods=days), close, strict=True))]


class FakeReply:
    """baostock's ResultData: rows served one by one through next() / get_row_data()."""

    def __init__(self, rows: list[list[str]] | None = None, error_code: str = "0",
                 error_msg: str = "success", fields: str = FIELDS) -> None:
        self.error_code, self.error_msg = error_code, error_msg
        self.fields = fields.split(",") if error_code == "0" else []
        self._rows, self._at = list(rows or []), 0

    def next(self) -> bool:
        return self._at < len(self._rows)

    def get_row_data(self) -> list[str]:
        self._at += 1
        return self._rows[self._at - 1]


class FakeBaostock:
    """Records calls; answers the query from `rows` within the requested dates."""

    def __init__(self) -> None:
        self.rows = baostock_rows()
        self.login_reply = FakeReply(error_msg="success")
        self.login_error: Exception | None = None
        self.query_reply: FakeReply | None = None  # set to answer every query with this reply
        self.calls: list[tuple] = []
        self.logouts = 0

    def login(self) -> FakeReply:
        self.calls.append(("login",))
        if self.login_error is not None:
            raise self.login_error
        return self.login_reply

    def query_history_k_data_plus(self, code, fields, start_date, end_date, frequency, adjustflag):
        self.calls.append(("query", code, fields, start_date, end_date, frequency, adjustflag))
        if self.query_reply is not None:
            return self.query_reply
        return FakeReply([row for row in self.rows if start_date <= row[0] <= end_date])

    def logout(self) -> None:
        self.logouts += 1


@pytest.fixture
def baostock_api(monkeypatch) -> FakeBaostock:
    fake = FakeBaostock()
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    monkeypatch.setattr(baostock_prices, "connect", lambda timeout: fake)
    return fake


def request(**given) -> BarRequest:
    return tushare_prices.bar_request(params(**{"end": "2019-03-29", **given}))


def test_string_rows_become_typed_bars_with_our_columns(tmp_path, baostock_api) -> None:
    result = load_data(stock_config(tmp_path, "data.inputs=[open,high,low,close,volume]"))
    assert baostock_api.calls == [("login",), ("query", "sh.000001", FIELDS, "2019-01-01",
                                                "2019-03-29", "d", "3")]
    assert baostock_api.logouts == 1
    frame = result.frame
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.name == "date"
    assert frame.index[0] == pd.Timestamp("2019-01-02") and len(frame) == 60
    assert frame.dtypes.eq(np.float64).all()
    last = baostock_api.rows[-1]
    assert frame["close"].iloc[-1] == float(last[4])
    assert frame["volume"].iloc[-1] == float(last[5]) / 100  # shares -> lots, as tushare counts
    assert not result.from_cache and result.cache_path.is_file()


def test_bars_come_back_oldest_first_in_the_pro_paths_columns(baostock_api) -> None:
    wanted = request()
    baostock_api.rows = baostock_api.rows[::-1]
    bars = baostock_prices.baostock_bars(baostock_api, wanted)
    assert list(bars.columns) == ["date", "open", "high", "low", "close", "volume"]
    assert bars["date"].is_monotonic_increasing and bars["date"].is_unique
    pro = tushare_prices.normalise_reply(tushare_reply(), wanted)
    assert set(bars.columns) <= set(pro.columns)  # everything downstream reads the same names
    assert bars.dtypes.equals(pro.dtypes[list(bars.columns)])


def test_rows_with_an_empty_close_are_dropped(tmp_path, baostock_api) -> None:
    suspended = baostock_api.rows[10][0]
    baostock_api.rows[10] = [suspended, "", "", "", "", ""]
    bars = baostock_prices.baostock_bars(baostock_api, request())
    assert len(bars) == 59 and pd.Timestamp(suspended) not in set(bars["date"])
    assert bars[["open", "close", "volume"]].notna().all().all()


def test_auto_without_a_token_uses_baostock_and_says_so(tmp_path, baostock_api, caplog) -> None:
    with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
        load_data(stock_config(tmp_path))
    said = [r.getMessage() for r in caplog.records if r.name == SOURCE_LOG]
    assert said == ["stock 000001.SH: fetching through baostock (no TUSHARE_TOKEN set)"]


def test_auto_with_a_token_uses_pro(tmp_path, pro_api, monkeypatch, caplog) -> None:
    def no_baostock(timeout):
        raise AssertionError("baostock must not be used when TUSHARE_TOKEN is set")

    monkeypatch.setattr(baostock_prices, "connect", no_baostock)
    with caplog.at_level(logging.INFO, logger=SOURCE_LOG):
        load_data(stock_config(tmp_path))
    assert pro_api.calls and pro_api.calls[0][0] == "index_daily"
    said = [r.getMessage() for r in caplog.records if r.name == SOURCE_LOG]
    assert said == ["stock 000001.SH: fetching through tushare's pro API (TUSHARE_TOKEN is set)"]


def test_api_baostock_is_used_even_with_a_token(tmp_path, pro_api, monkeypatch) -> None:
    fake = FakeBaostock()
    monkeypatch.setattr(baostock_prices, "connect", lambda timeout: fake)
    load_data(stock_config(tmp_path, "data.params.api=baostock"))
    assert pro_api.calls == [] and fake.calls[0] == ("login",)


def test_an_error_reply_is_one_line_naming_the_message_and_the_code(tmp_path, baostock_api) -> None:
    baostock_api.query_reply = FakeReply(error_code="10004011", error_msg="无效的证券代码\n请检查")
    with pytest.raises(DataError) as info:
        load_data(stock_config(tmp_path))
    assert one_line(info) == ("stock 000001.SH 2019-01-01..2019-03-29: baostock refused "
                              "query_history_k_data_plus for sh.000001: 无效的证券代码 请检查 "
                              "(error 10004011); check data.params.code/index/start/end")
    assert not isinstance(info.value, DataUnavailable)  # a refused request is not "offline"
    assert baostock_api.logouts == 1 and not (tmp_path / "cache").exists()


def test_a_failed_login_falls_back_to_the_cache(tmp_path, baostock_api) -> None:
    good = load_data(stock_config(tmp_path))
    baostock_api.login_reply = FakeReply(error_code="10002007", error_msg="网络接收错误。")
    stale = load_data(stock_config(tmp_path, "data.refresh=true"))
    assert stale.from_cache and stale.digest == good.digest
    assert ("cannot reach baostock (TCP port 10030): login failed: 网络接收错误。 (error 10002007)"
            in stale.notice)
    assert baostock_api.logouts == 2  # also after the failed login: baostock's socket is closed


def test_a_refused_socket_without_a_cache_is_one_line_with_the_fixes(tmp_path, baostock_api) -> None:
    baostock_api.login_error = ConnectionRefusedError(111, "Connection refused")
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path))
    message = one_line(info)
    assert message.startswith("stock 000001.SH 2019-01-01..2019-03-29: cannot reach baostock "
                              "(TCP port 10030): ConnectionRefusedError; check the network")
    for fix in ("no cache at", "check that baostock (TCP port 10030) is reachable",
                "set TUSHARE_TOKEN", 'make fetch ARGS="data=stock"', "data=csv"):
        assert fix in message
    assert baostock_api.logouts == 1


def test_a_network_code_in_the_query_reply_is_unavailable(baostock_api) -> None:
    baostock_api.query_reply = FakeReply(error_code="10002008", error_msg="网络接收超时")
    with pytest.raises(SourceUnavailable, match=r"cannot reach baostock .*\(error 10002008\)"):
        baostock_prices.baostock_bars(baostock_api, request())


def test_no_rows_is_unavailable_like_the_pro_path(tmp_path, baostock_api) -> None:
    baostock_api.rows = []
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path))
    assert one_line(info).startswith("stock 000001.SH 2019-01-01..2019-03-29: baostock returned no "
                                     "rows for sh.000001")


def test_codes_map_to_baostock_and_beijing_is_refused(tmp_path, baostock_api) -> None:
    assert baostock_prices.baostock_code(request(code="000001", index=True)) == "sh.000001"
    assert baostock_prices.baostock_code(request(code="600000", index=False)) == "sh.600000"
    assert baostock_prices.baostock_code(request(code="000001", index=False)) == "sz.000001"
    assert baostock_prices.baostock_code(request(code="399001", index=True)) == "sz.399001"
    with pytest.raises(ConfigError) as info:
        load_data(stock_config(tmp_path, "data.params.code='830799'", "data.params.index=false"))
    assert one_line(info).startswith("data.params.code='830799': 830799.BJ trades in Beijing, which "
                                     "baostock does not serve")
    assert baostock_api.calls == []  # refused before any login


def test_the_real_client_without_network_is_one_clean_line(tmp_path, monkeypatch, no_network,
                                                           capsys) -> None:
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataUnavailable) as info:
        load_data(stock_config(tmp_path))
    message = one_line(info)
    assert message.startswith("stock 000001.SH 2019-01-01..2019-03-29: cannot reach baostock "
                              "(TCP port 10030): login failed: ")
    assert [port for _, port in no_network] == [10030]
    assert capsys.readouterr().out == ""  # baostock's "login failed!" and friends are swallowed
    assert socket.getdefaulttimeout() == before
    import baostock.common.context as context

    assert getattr(context, "default_socket", None) is None  # no socket left open
