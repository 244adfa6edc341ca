"""A cached universe of stock codes (pipeline.data.sources.universe_stock), without a network.

The pro API is faked at the stock source's one seam, tushare_prices.connect: the fake's query()
answers daily and index_weight with frames of tushare's shape, and can refuse chosen codes the
ways tushare does (a bare Exception with its text, or a requests error for no network). Sleeps
are recorded, not slept.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline.cli import load_config
from pipeline.config import source_params
from pipeline.data import cache
from pipeline.data.loading import load_data, public_params
from pipeline.data.sources import tushare_prices
from pipeline.data.sources.universe_stock import code_slot, load_stock_universe
from pipeline.errors import DataError, DataUnavailable

TOKEN = "fake-token-universe-stock-5e7a1b"
RATE_LIMITED = "抱歉，您每分钟最多访问该接口500次，权限的具体详情访问：https://tushare.pro/document/1"
LOGGER = "pipeline.data.sources"


def daily_reply(ts_code: str, days: int = 8) -> pd.DataFrame:
    """daily's reply (newest first); closes that differ from code to code."""
    dates = pd.bdate_range("2024-01-02", periods=days)
    close = 10.0 + int(ts_code[:6]) % 97 + np.arange(days) * 0.5
    return pd.DataFrame({
        "ts_code": ts_code, "trade_date": dates.strftime("%Y%m%d"), "open": close - 0.1,
        "high": close + 0.2, "low": close - 0.2, "close": close, "vol": 1e4 + np.arange(days),
    }).iloc[::-1].reset_index(drop=True)


def closes(ts_code: str) -> list[float]:
    """The closes a fetch of `ts_code` returns, oldest first."""
    return daily_reply(ts_code)["close"].iloc[::-1].tolist()


def weight_reply(snapshots: dict[str, list[str]], index_code: str = "000300.SH") -> pd.DataFrame:
    rows = [(index_code, con, day, 1.0) for day, cons in sorted(snapshots.items(), reverse=True)
            for con in cons]
    return pd.DataFrame(rows, columns=["index_code", "con_code", "trade_date", "weight"])


class ProApi:
    """daily for any code; index_weight from `weights`. `refuse` maps a code to the text tushare
    would raise, `unreachable` codes raise a requests error, and a code in `rate_limited` is
    refused for the rate that many times before it is answered."""

    def __init__(self) -> None:
        self.weights = weight_reply({})
        self.refuse: dict[str, str] = {}
        self.unreachable: set[str] = set()
        self.rate_limited: Counter[str] = Counter()
        self.calls: list[tuple[str, str]] = []

    def query(self, api_name: str, fields: str = "", **kwargs) -> pd.DataFrame:
        code = kwargs.get("ts_code") or kwargs.get("index_code")
        self.calls.append((api_name, code))
        if code in self.unreachable:
            raise requests.ConnectionError("connection refused")
        if code in self.refuse:
            raise Exception(self.refuse[code])
        if self.rate_limited[code] > 0:
            self.rate_limited[code] -= 1
            raise Exception(RATE_LIMITED)
        if api_name == "index_weight":
            reply = self.weights[self.weights["index_code"] == code]
        else:
            reply = daily_reply(code)
        days = reply["trade_date"]
        return reply[(days >= kwargs["start_date"]) & (days <= kwargs["end_date"])]

    def daily_calls(self) -> list[str]:
        return [code for name, code in self.calls if name == "daily"]


@pytest.fixture
def pro(monkeypatch) -> ProApi:
    fake = ProApi()
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setattr(tushare_prices, "connect", lambda token, timeout: fake)
    return fake


class Waits(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def universe(**given) -> dict:
    """UniverseStockParams as config.load checks them, pro API, a start the fake's bars follow."""
    return source_params("universe_stock", {"api": "pro", "start": "2024-01-01", **given})


def load(params: dict, cache_dir, **options):
    options.setdefault("progress", False)
    options.setdefault("sleep", Waits())
    return load_stock_universe(params, cache_dir, **options)


def series_closes(result, code: str) -> list[float]:
    return result.frame.loc[result.frame["series"] == code, "close"].tolist()


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# --- 1. fetched, cached per code, reused -----------------------------------------------------------


def test_codes_are_fetched_cached_per_code_and_reused_while_fresh(pro, tmp_path, capsys) -> None:
    result = load(universe(codes=["600000.SH", "000001"]), tmp_path, progress=True)

    assert result.fetched == ["600000.SH", "000001.SZ"] and result.failed == {}
    assert "universe" in capsys.readouterr().err  # the tqdm bar
    frame = result.frame
    assert list(frame.columns[:2]) == ["date", "series"] and "close" in frame.columns
    assert frame["series"].tolist() == ["000001.SZ"] * 8 + ["600000.SH"] * 8  # sorted by series
    assert series_closes(result, "600000.SH") == closes("600000.SH")
    assert series_closes(result, "000001.SZ") == closes("000001.SZ")
    assert frame["date"].dtype == "datetime64[ns]" and isinstance(frame.index, pd.RangeIndex)
    assert frame.groupby("series")["date"].apply(lambda d: d.is_monotonic_increasing).all()
    # One Parquet file and one manifest per code.
    assert len(list(tmp_path.glob("stock-*.json"))) == 2
    assert len(list(tmp_path.glob("stock-*.parquet"))) == 2

    pro.unreachable |= {"600000.SH", "000001.SZ"}
    calls = len(pro.calls)
    again = load(universe(codes=["600000.SH", "000001"]), tmp_path)
    assert len(pro.calls) == calls  # fetched today: fresh, so nothing is asked for
    pd.testing.assert_frame_equal(again.frame, frame)


# --- 2. one code refused -----------------------------------------------------------------------------


def test_a_refused_code_fails_alone_and_the_other_is_kept_and_cached(pro, tmp_path) -> None:
    pro.refuse["600001.SH"] = "您的积分不足\n请充值"
    result = load(universe(codes=["600001.SH", "000001.SZ"]), tmp_path)

    assert result.fetched == ["000001.SZ"]
    assert list(result.failed) == ["600001.SH"]
    reason = result.failed["600001.SH"]
    assert "\n" not in reason and "refused daily: 您的积分不足 请充值" in reason
    assert series_closes(result, "000001.SZ") == closes("000001.SZ")
    assert pro.daily_calls() == ["600001.SH", "000001.SZ"]  # no retry for a plain refusal
    assert len(list(tmp_path.glob("stock-*.json"))) == 1


# --- 3. offline ------------------------------------------------------------------------------------


def test_offline_uses_caches_only_and_names_codes_without_one(pro, tmp_path) -> None:
    load(universe(codes=["600000.SH"]), tmp_path)
    pro.calls.clear()

    result = load(universe(codes=["600000.SH", "000002.SZ"]), tmp_path, offline=True)
    assert pro.calls == []
    assert result.fetched == ["600000.SH"]
    assert series_closes(result, "600000.SH") == closes("600000.SH")
    assert result.failed["000002.SZ"].startswith("no cache (data.offline=true); fetch with make fetch")

    with pytest.raises(DataUnavailable) as info:
        load(universe(codes=["000002.SZ", "000004.SZ"]), tmp_path, offline=True)
    assert one_line(info).startswith("universe: all 2 codes failed; first: 000002.SZ (no cache")
    assert pro.calls == []


# --- 4. a stale cache stands in --------------------------------------------------------------------


def test_a_stale_cache_stands_in_for_an_unreachable_code(pro, tmp_path, caplog) -> None:
    params = universe(codes=["600000.SH"], attempts=2, backoff_s=0.25)  # end=None: stale tomorrow
    code = code_slot(params, "600000.SH", tmp_path)
    old = tushare_prices.stock_bars(code.params)  # through the fake, as a fetch yesterday did
    old["close"] += 100.0
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    cache.store(code.slot, old, "stock", code.params, now=yesterday)
    pro.calls.clear()
    pro.unreachable.add("600000.SH")

    waits = Waits()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        result = load(params, tmp_path, sleep=waits)

    assert pro.daily_calls() == ["600000.SH", "600000.SH"] and waits == [0.25]  # it did try
    assert result.failed == {} and result.fetched == ["600000.SH"]
    assert series_closes(result, "600000.SH") == [c + 100.0 for c in closes("600000.SH")]
    stale = [m for m in caplog.messages if "stale caches" in m]
    assert len(stale) == 1 and stale[0].startswith("universe: 1 of 1 codes from stale caches")
    assert "cannot reach the tushare pro API" in stale[0]
    # The stale cache was not replaced (nothing new to replace it with).
    assert cache.load(code.slot).fetched_at == yesterday.isoformat(timespec="seconds")


def test_a_corrupt_cache_is_no_cache_with_one_warning(pro, tmp_path, caplog) -> None:
    params = universe(codes=["600000.SH"])
    code = code_slot(params, "600000.SH", tmp_path)
    code.slot.manifest_path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = load(params, tmp_path)
    warnings = [m for m in caplog.messages if "treating it as no cache" in m]
    assert len(warnings) == 1 and warnings[0].startswith("stock 600000.SH: cache manifest")
    assert series_closes(result, "600000.SH") == closes("600000.SH")
    assert json.loads(code.slot.manifest_path.read_text())["rows"] == 8  # refetched and stored


# --- 5. the slot is data=stock's ------------------------------------------------------------------


def stock_config(cache_dir, six: str, ts_code: str, *overrides: str):
    """data=stock for one stock code, as the CLI composes it."""
    return load_config("train", ["data=stock", f"data.cache_dir={cache_dir}",
                                 f"data.params.code='{six}'", "data.params.index=false",
                                 f"+data.params.ts_code={ts_code}", "data.params.start=2024-01-01",
                                 "data.params.api=pro", *overrides]).data


def test_the_cache_slot_is_shared_with_data_stock(pro, tmp_path) -> None:
    data = stock_config(tmp_path, "600519", "600519.SH")
    single = load_data(data)  # fills the single-code source's cache
    assert not single.from_cache
    pro.calls.clear()

    result = load(universe(codes=["600519"]), tmp_path, offline=True)
    assert pro.calls == [] and result.failed == {}
    assert series_closes(result, "600519.SH") == single.frame["close"].tolist()
    assert code_slot(universe(), "600519.SH", tmp_path).slot.manifest_path == \
        cache.cache_slot(tmp_path, "stock", public_params(data.params)).manifest_path
    assert len(list(tmp_path.glob("*.json"))) == 1  # the one slot both use

    # And the other way: what the universe fetched, data=stock trains on offline.
    load(universe(codes=["000001.SZ"]), tmp_path)
    pro.calls.clear()
    single = load_data(stock_config(tmp_path, "000001", "000001.SZ", "data.offline=true"))
    assert pro.calls == [] and single.from_cache
    assert single.frame["close"].tolist() == closes("000001.SZ")


# --- 6. an index's members -------------------------------------------------------------------------


SNAPSHOTS = {"20231229": ["600000.SH", "000001.SZ"], "20240131": ["600519.SH", "000001.SZ"]}


def test_an_index_adds_its_members_after_the_codes_and_caches_the_list(pro, tmp_path) -> None:
    pro.weights = weight_reply(SNAPSHOTS)
    params = universe(codes=["600519.SH", "000002.SZ"], index="000300.SH", members_on="2024-02-15")
    result = load(params, tmp_path)

    assert result.fetched == ["600519.SH", "000002.SZ", "000001.SZ"]  # deduplicated, in order
    assert pro.daily_calls() == result.fetched
    assert series_closes(result, "000001.SZ") == closes("000001.SZ")

    pro.calls.clear()
    offline = load(params, tmp_path, offline=True)  # the member list was cached too
    assert pro.calls == [] and offline.fetched == result.fetched


def test_index_members_without_a_token_is_one_line_naming_codes(pro, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TUSHARE_TOKEN")
    with pytest.raises(DataError) as info:
        load(universe(codes=["600000.SH"], index="000300.SH"), tmp_path)
    message = one_line(info)
    assert "index members need tushare's pro API token (TUSHARE_TOKEN" in message
    assert "data.params.codes" in message and pro.calls == []


# --- 7. the token stays out ------------------------------------------------------------------------


def test_the_token_never_reaches_reasons_or_logs(pro, tmp_path, caplog) -> None:
    pro.refuse["600000.SH"] = f"token {TOKEN} 不对"
    with caplog.at_level(logging.DEBUG):
        result = load(universe(codes=["600000.SH", "000001.SZ"]), tmp_path)
        with pytest.raises(DataError) as info:
            load(universe(codes=["600000.SH"]), tmp_path)
    assert "token <redacted> 不对" in result.failed["600000.SH"]
    assert TOKEN not in " ".join(result.failed.values())
    assert TOKEN not in str(info.value) and TOKEN not in caplog.text
    assert "<redacted>" in caplog.text  # the reason was logged, scrubbed


# --- 8. rate limits ------------------------------------------------------------------------------


def test_a_rate_limited_code_is_retried_with_backoff(pro, tmp_path) -> None:
    pro.rate_limited["600000.SH"] = 2
    waits = Waits()
    result = load(universe(codes=["600000.SH"], backoff_s=0.5), tmp_path, sleep=waits)
    assert waits == [0.5, 1.0] and pro.daily_calls() == ["600000.SH"] * 3
    assert result.failed == {} and series_closes(result, "600000.SH") == closes("600000.SH")
