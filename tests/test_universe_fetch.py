"""Fetching a universe one code at a time (pipeline.data.sources.universe_fetch), without a network.

The pro API is faked at the stock source's seam (tushare_prices.connect) by an object whose
query() answers index_weight and daily with frames of tushare's shape; fetch_universe gets fake
fetch_one functions and a sleep that only records how long it was asked to wait.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from pipeline.data.sources import SourceUnavailable, tushare_prices
from pipeline.data.sources.universe_fetch import (
    UniverseFetch,
    fetch_universe,
    index_members,
    is_rate_limited,
    split_ts_code,
    stock_fetcher,
)
from pipeline.errors import ConfigError, DataError

TOKEN = "fake-token-universe-91c0d4"
RATE_LIMITED = "抱歉，您每分钟最多访问该接口500次，权限的具体详情访问：https://tushare.pro/document/1?doc_id=108。"


def weight_reply(snapshots: dict[str, list[str]], index_code: str = "000300.SH") -> pd.DataFrame:
    """index_weight's reply: index_code, con_code, trade_date, weight; newest snapshot first."""
    rows = [(index_code, con, day, round(100.0 / len(cons), 4))
            for day, cons in sorted(snapshots.items(), reverse=True) for con in cons]
    return pd.DataFrame(rows, columns=["index_code", "con_code", "trade_date", "weight"])


def daily_reply(ts_code: str, start: str = "2024-01-02", days: int = 20) -> pd.DataFrame:
    """daily's reply for one stock (newest first), prices that differ from code to code."""
    dates = pd.bdate_range(start, periods=days)
    close = 10.0 + int(ts_code[:6]) % 97 + np.arange(days) * 0.1
    return pd.DataFrame({
        "ts_code": ts_code, "trade_date": dates.strftime("%Y%m%d"), "open": close - 0.05,
        "high": close + 0.2, "low": close - 0.2, "close": close, "vol": 1e5 + np.arange(days),
    }).iloc[::-1].reset_index(drop=True)


class ProApi:
    """Answers index_weight from `weights` and daily from `bars` (per ts_code), within the dates."""

    def __init__(self, weights: pd.DataFrame | None = None,
                 bars: dict[str, pd.DataFrame] | None = None) -> None:
        self.weights = weights if weights is not None else weight_reply({})
        self.bars = bars or {}
        self.calls: list[tuple[str, dict]] = []

    def query(self, api_name: str, fields: str = "", **kwargs) -> pd.DataFrame:
        self.calls.append((api_name, kwargs))
        if api_name == "index_weight":
            reply = self.weights[self.weights["index_code"] == kwargs["index_code"]]
        else:
            reply = self.bars.get(kwargs["ts_code"], daily_reply(kwargs["ts_code"]).iloc[0:0])
        days = reply["trade_date"]
        inside = (days >= kwargs["start_date"]) & (days <= kwargs["end_date"])
        return reply[inside].reset_index(drop=True)


@pytest.fixture
def pro(monkeypatch) -> ProApi:
    fake = ProApi()
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setattr(tushare_prices, "connect", lambda token, timeout: fake)
    return fake


def bars(code: str, days: int = 5) -> pd.DataFrame:
    """What a fetch_one returns: dated bars, newest first (fetch_universe sorts them)."""
    dates = pd.bdate_range("2024-01-02", periods=days)[::-1]
    return pd.DataFrame({"date": dates, "close": np.arange(days, 0, -1, dtype=float) + len(code)})


class Waits(list):
    """A sleep that records its waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- index_members ---------------------------------------------------------------------------------


SNAPSHOTS = {"20231229": ["600000.SH", "000001.SZ", "600519.SH"],
             "20240131": ["600519.SH", "000001.SZ", "300750.SZ", "000001.SZ"]}


def test_members_are_the_latest_snapshot_sorted_and_deduplicated() -> None:
    api = ProApi(weights=weight_reply(SNAPSHOTS))
    assert index_members(api, "000300.SH", "2024-02-15") == ["000001.SZ", "300750.SZ", "600519.SH"]
    assert api.calls == [("index_weight", {"index_code": "000300.SH", "start_date": "20231115",
                                           "end_date": "20240215"})]


def test_on_or_before_picks_the_earlier_snapshot() -> None:
    api = ProApi(weights=weight_reply(SNAPSHOTS))
    assert index_members(api, "000300.SH", "2024-01-30") == ["000001.SZ", "600000.SH", "600519.SH"]
    # A reply that ignores the end date still cannot leak a later snapshot in.
    api.query = lambda *a, **k: weight_reply(SNAPSHOTS)
    assert index_members(api, "000300.SH", "20240105") == ["000001.SZ", "600000.SH", "600519.SH"]


def test_an_empty_reply_is_one_line_without_the_token(monkeypatch) -> None:
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    with pytest.raises(SourceUnavailable) as info:
        index_members(ProApi(weights=weight_reply(SNAPSHOTS)), "000905.SH", "2024-02-15")
    message = one_line(info)
    assert message.startswith("index 000905.SH 2023-11-15..2024-02-15: tushare's index_weight "
                              "returned no members")
    assert "check the index code" in message and TOKEN not in message


def test_an_api_refusal_is_one_line_without_the_token(monkeypatch) -> None:
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    api = ProApi()

    def refuse(*args, **kwargs):
        raise Exception(f"token {TOKEN} 没有权限\n请充值")

    api.query = refuse
    with pytest.raises(DataError) as info:
        index_members(api, "000300.SH", "2024-02-15")
    message = one_line(info)
    assert TOKEN not in message and not isinstance(info.value, SourceUnavailable)
    assert "refused index_weight: token <redacted> 没有权限 请充值; check that TUSHARE_TOKEN" in message


def test_a_bad_date_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"on_or_before='soon': not a date"):
        index_members(ProApi(), "000300.SH", "soon")


# --- fetch_universe ----------------------------------------------------------------------------------


def test_a_rate_limited_code_is_retried_with_backoff_and_ends_fetched() -> None:
    calls: list[str] = []

    def fetch_one(code: str) -> pd.DataFrame:
        calls.append(code)
        if code == "600000.SH" and calls.count(code) <= 2:
            raise DataError(f"stock {code}: the tushare pro API refused daily: {RATE_LIMITED}")
        return bars(code)

    waits = Waits()
    result = fetch_universe(["000001.SZ", "600000.SH"], fetch_one, sleep=waits, progress=False)
    assert waits == [1.0, 2.0]
    assert calls == ["000001.SZ", "600000.SH", "600000.SH", "600000.SH"]
    assert isinstance(result, UniverseFetch)
    assert result.fetched == ["000001.SZ", "600000.SH"] and result.failed == {}
    assert list(result.frame.columns) == ["date", "series", "close"]
    assert result.frame["series"].tolist() == ["000001.SZ"] * 5 + ["600000.SH"] * 5
    for _, rows in result.frame.groupby("series"):
        assert rows["date"].is_monotonic_increasing


def test_unavailable_codes_are_retried_until_the_attempts_run_out() -> None:
    def fetch_one(code: str) -> pd.DataFrame:
        if code == "600000.SH":
            raise SourceUnavailable(f"stock {code}: cannot reach the tushare pro API")
        return bars(code)

    waits = Waits()
    result = fetch_universe(["600000.SH", "000001.SZ"], fetch_one, attempts=3, backoff_s=0.5,
                            sleep=waits, progress=False)
    assert waits == [0.5, 1.0]
    assert result.failed == {"600000.SH": "gave up after 3 attempts: stock 600000.SH: cannot "
                                          "reach the tushare pro API"}


def test_a_failing_code_is_recorded_and_the_others_are_kept() -> None:
    def fetch_one(code: str) -> pd.DataFrame:
        if code == "600001.SH":
            raise DataError(f"stock {code}: the tushare reply lacks column(s) close")
        return bars(code)

    waits = Waits()
    result = fetch_universe(["600000.SH", "600001.SH", "000001.SZ"], fetch_one, sleep=waits,
                            progress=False)
    assert waits == []  # a refusal that is not a rate limit is not retried
    assert result.failed == {"600001.SH": "stock 600001.SH: the tushare reply lacks column(s) close"}
    assert result.fetched == ["600000.SH", "000001.SZ"]
    assert sorted(result.frame["series"].unique()) == ["000001.SZ", "600000.SH"]
    # Sorted by (series, date), whatever order the codes were fetched in.
    assert result.frame[["series", "date"]].equals(
        result.frame[["series", "date"]].sort_values(["series", "date"], ignore_index=True))


def test_every_code_failing_is_one_data_error_line() -> None:
    def fetch_one(code: str) -> pd.DataFrame:
        raise DataError(f"stock {code}: the tushare pro API refused daily: token 不对\n请确认")

    with pytest.raises(DataError) as info:
        fetch_universe(["600000.SH", "000001.SZ"], fetch_one, sleep=Waits(), progress=False)
    assert one_line(info) == ("universe: all 2 codes failed; first: 600000.SH (stock 600000.SH: "
                              "the tushare pro API refused daily: token 不对 请确认); fix that "
                              "reason and fetch again")
    assert not isinstance(info.value, SourceUnavailable)


def test_every_code_unreachable_is_unavailable() -> None:
    def fetch_one(code: str) -> pd.DataFrame:
        raise SourceUnavailable(f"stock {code}: cannot reach baostock")

    with pytest.raises(SourceUnavailable, match=r"^universe: all 1 codes failed; first: 600000.SH "
                                                r"\(gave up after 2 attempts"):
        fetch_universe(["600000.SH"], fetch_one, attempts=2, sleep=Waits(), progress=False)


def test_the_summary_line_names_the_failures(caplog) -> None:
    def fetch_one(code: str) -> pd.DataFrame:
        if code.startswith("6000"):
            raise DataError(f"stock {code}: no rows")
        return bars(code)

    codes = ["000001.SZ", "600001.SH", "600002.SH", "000002.SZ"]
    with caplog.at_level(logging.INFO, logger="pipeline.data.sources.universe_fetch"):
        fetch_universe(codes, fetch_one, sleep=Waits(), progress=False)
    assert ("universe: 2 of 4 codes fetched; failed: 600001.SH (stock 600001.SH: no rows), "
            "600002.SH (stock 600002.SH: no rows)") in caplog.messages


def test_the_progress_bar_names_the_current_code(capsys) -> None:
    result = fetch_universe(["000001.SZ", "600519.SH"], bars, sleep=Waits(), progress=True)
    assert result.fetched == ["000001.SZ", "600519.SH"]
    shown = capsys.readouterr().err
    assert "universe" in shown and "2/2" in shown and "600519.SH" in shown


def test_an_empty_frame_and_a_token_in_a_reason_are_failures_without_the_token(monkeypatch) -> None:
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)

    def fetch_one(code: str) -> pd.DataFrame:
        if code == "600000.SH":
            return bars(code).iloc[0:0]
        raise DataError(f"stock {code}: refused for {TOKEN}")

    with pytest.raises(DataError) as info:
        fetch_universe(["600000.SH", "000001.SZ"], fetch_one, sleep=Waits(), progress=False)
    assert "first: 600000.SH (600000.SH: the fetch returned no rows" in one_line(info)

    result = fetch_universe(["000001.SZ", "600519.SH"],
                            lambda c: bars(c) if c == "600519.SH" else fetch_one(c),
                            sleep=Waits(), progress=False)
    assert result.failed == {"000001.SZ": "stock 000001.SZ: refused for <redacted>"}


def test_rate_limit_markers() -> None:
    assert is_rate_limited(DataError(f"stock 600000.SH: refused daily: {RATE_LIMITED}"))
    assert is_rate_limited(DataError("HTTP 429 Too Many Requests"))
    assert not is_rate_limited(DataError("stock 600000.SH: token 不对"))


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="attempts=0: must be at least 1"):
        fetch_universe(["600000.SH"], bars, attempts=0)
    with pytest.raises(ConfigError, match="universe: no codes to fetch"):
        fetch_universe([], bars)


# --- stock_fetcher -------------------------------------------------------------------------------


def test_stock_fetcher_returns_bars_with_the_series_column(pro) -> None:
    pro.bars = {code: daily_reply(code) for code in ("600000.SH", "000001.SZ")}
    fetch_one = stock_fetcher({"start": "2024-01-01", "end": "2024-01-31", "api": "pro",
                               "code": "000001", "index": True})  # code/index: ignored, per code
    frame = fetch_one("600000.SH")
    assert pro.calls == [("daily", {"ts_code": "600000.SH", "start_date": "20240101",
                                    "end_date": "20240131"})]
    assert (frame["series"] == "600000.SH").all() and len(frame) == 20
    assert frame["date"].is_monotonic_increasing and frame["date"].iloc[0] == pd.Timestamp("2024-01-02")
    assert frame["close"].iloc[-1] == pro.bars["600000.SH"]["close"].iloc[0]


def test_stock_fetcher_through_fetch_universe(pro) -> None:
    pro.weights = weight_reply({"20240131": ["600000.SH", "000001.SZ", "688981.SH"]})
    pro.bars = {code: daily_reply(code) for code in ("600000.SH", "000001.SZ")}
    codes = index_members(pro, "000300.SH", "2024-01-31")
    # auto with TUSHARE_TOKEN set goes to the pro API, as the stock source would.
    result = fetch_universe(codes, stock_fetcher({"start": "2024-01-01", "end": "2024-01-31"}),
                            sleep=Waits(), progress=False)
    assert result.fetched == ["000001.SZ", "600000.SH"]
    assert list(result.failed) == ["688981.SH"]  # no rows: retried (maybe an HTTP error), then given up
    assert result.failed["688981.SH"].startswith("gave up after 4 attempts: stock 688981.SH "
                                                 "2024-01-01..2024-01-31: tushare's daily returned no rows")
    assert list(result.frame.columns[:2]) == ["date", "series"]
    assert result.frame.groupby("series").size().to_dict() == {"000001.SZ": 20, "600000.SH": 20}


def test_ts_codes() -> None:
    assert split_ts_code("600000.SH") == ("600000", "600000.SH")
    assert split_ts_code("000001") == ("000001", "000001.SZ")
    with pytest.raises(ConfigError, match=r"stock code '600000.XX': expected a ts_code like 600000.SH"):
        split_ts_code("600000.xx")
