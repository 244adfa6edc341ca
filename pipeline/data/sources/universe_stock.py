"""A universe of stock codes, each kept in the data=stock source's own cache slot.

    load_stock_universe(params, "data_cache")  -> UniverseFetch(frame, failed, fetched)

Why per code, and why the single-code slot: a universe of 300 codes is refetched a code at a
time (universe_fetch explains the politeness), so one Parquet file per code lets a failed or
interrupted run keep what it already has, and a code fetched once by `data=stock` (or by another
universe holding it) is never asked for again the same day. The slot key is the hash of exactly
the params `loading.load_data` hashes for `data=stock` with that code, so the two share files.

Per code: a fresh cache is used as is; otherwise the stock source fetches it (with
universe_fetch's backoff on refusals for the rate and on an unreachable API), the reply is
validated, and only then stored, so a bad reply never replaces a good cache. A code whose fetch
fails but has an older cache trains from that cache (one warning line counts them); a code with
neither is recorded as failed and the others go on. Offline, caches are all there is.

The index's member list (when data.params.index is set) is cached the same way, so an index
universe can be trained offline once it has been fetched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.data import cache
from pipeline.data.sources import SourceUnavailable, tushare_prices
from pipeline.data.sources.universe_fetch import (
    DATE,
    FETCHER_PARAMS,
    SERIES,
    UniverseFetch,
    all_failed,
    as_long,
    fetch_with_backoff,
    index_members,
    one_line,
    progress_over,
    split_ts_code,
    summary,
)
from pipeline.data.validation import Rules, validate
from pipeline.errors import ConfigError, DataError, DataUnavailable, PipelineError

log = logging.getLogger(__name__)

# Each code lives in the single-code source's slot, under the source's own name.
STOCK_SOURCE = "stock"
# The member list's slot: its own name, so it can never collide with a code's bars.
MEMBERS_SOURCE = "index_members"
MEMBER_COLUMN = "con_code"
# What a code's frame must pass before it is cached or trained on: the bars the stock configs
# use as inputs (those present), numeric and gap-free, prices above zero.
PRICE_COLUMNS = ("open", "high", "low", "close")
CHECKED_COLUMNS = (*PRICE_COLUMNS, "volume")
# How many stale codes the stale-cache line names.
NAMED_STALE = 5


@dataclass(frozen=True)
class CodeSlot:
    """One code of the universe: its data=stock params and the cache slot they hash to."""

    ts_code: str
    params: dict[str, Any]  # exactly what load_data would hand the stock source
    public: dict[str, Any]  # those params as load_data hashes them and writes the manifest
    slot: cache.CacheSlot


@dataclass(frozen=True)
class Policy:
    """How the caller wants every code fetched; the same for all of them."""

    offline: bool
    refresh: bool
    attempts: int
    backoff_s: float
    sleep: Callable[[float], Any]


def load_stock_universe(params: Mapping[str, Any], cache_dir: str | os.PathLike, *,
                        offline: bool = False, refresh: bool = False, progress: bool = True,
                        sleep: Callable[[float], Any] = time.sleep) -> UniverseFetch:
    """Every code's daily bars (data.params.codes plus the index's members), from the cache when
    it is fresh, fetched otherwise; failed codes are reported, not fatal, unless all fail.

    `params` are the checked UniverseStockParams (pipeline.config.source_params).
    """
    policy = Policy(offline=offline, refresh=refresh, attempts=int(params["attempts"]),
                    backoff_s=float(params["backoff_s"]), sleep=sleep)
    codes = universe_codes(params, cache_dir, policy)
    frames: list[pd.DataFrame] = []
    failed: dict[str, str] = {}
    unavailable: set[str] = set()
    stale: dict[str, str] = {}
    for ts_code in progress_over(codes, progress):
        code = code_slot(params, ts_code, cache_dir)
        try:
            frame, stale_note = code_frame(code, policy)
        except PipelineError as exc:
            failed[ts_code] = one_line(exc)
            if isinstance(exc, SourceUnavailable):
                unavailable.add(ts_code)
            continue
        frames.append(as_long(frame, ts_code))
        if stale_note:
            stale[ts_code] = stale_note
    fetched = [c for c in codes if c not in failed]
    if stale:
        log.warning("%s", stale_line(stale, len(codes)))
    log.log(logging.WARNING if failed else logging.INFO, summary(len(fetched), len(codes), failed))
    if not fetched:
        raise _every_code_failed(codes, failed, unavailable, offline)
    return UniverseFetch(frame=long_frame(frames), failed=failed, fetched=fetched)


# --- which codes -------------------------------------------------------------------------------


def universe_codes(params: Mapping[str, Any], cache_dir: str | os.PathLike,
                   policy: Policy) -> list[str]:
    """data.params.codes as ts_codes, then the index's members; each once, in that order."""
    codes = [split_ts_code(c)[1] for c in params["codes"]]
    if params["index"]:
        codes += members(params, cache_dir, policy)
    codes = list(dict.fromkeys(codes))
    if not codes:
        raise ConfigError("universe: no codes to fetch; set data.params.codes (e.g. "
                          "[600000.SH,000001.SZ]) or data.params.index (e.g. 000300.SH)")
    return codes


def members(params: Mapping[str, Any], cache_dir: str | os.PathLike, policy: Policy) -> list[str]:
    """The index's members at members_on: the cached list when fresh (or offline), else the pro
    API's index_weight, cached; an older list stands in when the API cannot be had."""
    index = str(params["index"]).strip().upper()
    on = params["members_on"]
    slot = cache.cache_slot(cache_dir, MEMBERS_SOURCE, {"index": index, "members_on": on})
    label = f"index {index} members"
    cached = load_or_warn(slot, label)
    # members_on plays the part of `end`: a list as of a past date does not change.
    if cached is not None and (policy.offline or (not policy.refresh
                                                  and cache.is_fresh(cached, {"end": on}))):
        return member_list(cached.frame)
    if policy.offline:
        raise DataUnavailable(f"{label}: data.offline=true and no cached member list in "
                              f"{slot.directory}; fetch where there is a network, or list the "
                              "codes in data.params.codes")
    try:
        listed = fetch_with_backoff(index, lambda _: fetch_members(index, on, params),
                                     policy.attempts, policy.backoff_s, policy.sleep)
    except PipelineError as exc:
        if cached is None:
            raise
        log.warning("%s: %s; using the list fetched %s", label, one_line(exc), cached.fetched_at)
        return member_list(cached.frame)
    cache.store(slot, listed, MEMBERS_SOURCE, {"index": index, "members_on": on})
    return member_list(listed)


def fetch_members(index: str, on: str | None, params: Mapping[str, Any]) -> pd.DataFrame:
    token = os.environ.get(tushare_prices.TOKEN_ENV, "").strip()
    if not token:
        # DataUnavailable, not SourceUnavailable: waiting and asking again would not help.
        raise DataUnavailable(f"data.params.index={index}: index members need tushare's pro API "
                              f"token ({tushare_prices.TOKEN_ENV} in the environment); set it, or "
                              "list the codes in data.params.codes, which work without one")
    api = tushare_prices.connect(token, float(params["timeout"]))
    return pd.DataFrame({MEMBER_COLUMN: index_members(api, index, on)})


def member_list(frame: pd.DataFrame) -> list[str]:
    return [str(c) for c in frame[MEMBER_COLUMN]]


# --- one code ----------------------------------------------------------------------------------


def code_slot(params: Mapping[str, Any], code: str, cache_dir: str | os.PathLike) -> CodeSlot:
    """The code's data=stock params, built as config.load builds them (the stock schema fills
    and coerces them), and the slot loading.load_data would hash them to."""
    from pipeline.config import source_params  # lazy: pipeline.config pulls in Hydra and models
    from pipeline.data.loading import public_params

    six, ts_code = split_ts_code(code)
    given = {**{k: params[k] for k in FETCHER_PARAMS}, "code": six, "ts_code": ts_code,
             "index": False}
    stock = source_params(STOCK_SOURCE, given)
    public = public_params(stock)
    return CodeSlot(ts_code=ts_code, params=stock, public=public,
                    slot=cache.cache_slot(cache_dir, STOCK_SOURCE, public))


def code_frame(code: CodeSlot, policy: Policy) -> tuple[pd.DataFrame, str | None]:
    """(the code's bars, None) or (its older cache's bars, why the fetch failed)."""
    cached = load_or_warn(code.slot, f"stock {code.ts_code}")
    if policy.offline:
        if cached is None:
            raise DataUnavailable(f"no cache (data.offline=true); fetch with make fetch where "
                                  f"there is a network and copy {code.slot.directory}/ here")
        return checked(cached.frame, code), None
    if cached is not None and not policy.refresh and cache.is_fresh(cached, code.params):
        return checked(cached.frame, code), None
    try:
        raw = fetch_with_backoff(code.ts_code, lambda _: tushare_prices.stock_bars(code.params),
                                  policy.attempts, policy.backoff_s, policy.sleep)
        checked(raw, code)  # before the store: a bad reply must not replace a good cache
    except PipelineError as exc:
        if cached is None:
            raise
        return checked(cached.frame, code), f"{one_line(exc)}; cache fetched {cached.fetched_at}"
    stored = cache.store(code.slot, raw, STOCK_SOURCE, code.public)
    return stored.frame, None


def load_or_warn(slot: cache.CacheSlot, label: str) -> cache.CachedFrame | None:
    """The slot's cache; None when there is none, or (with one warning) when it is corrupt."""
    try:
        return cache.load(slot)
    except cache.CorruptCache as exc:
        log.warning("%s: %s; treating it as no cache", label, one_line(exc))
        return None


def checked(frame: pd.DataFrame, code: CodeSlot) -> pd.DataFrame:
    """`frame` unchanged if its bars pass validation; DataError naming the code if not."""
    if not isinstance(frame, pd.DataFrame) or "close" not in frame.columns:
        columns = ", ".join(map(str, getattr(frame, "columns", []))) or "none"
        raise DataError(f"stock {code.ts_code}: the bars have no 'close' column; got {columns}")
    present = [c for c in CHECKED_COLUMNS if c in frame.columns]
    validate(frame, Rules(label=f"stock {code.ts_code}", columns=present, date_column=DATE,
                          positive=[c for c in PRICE_COLUMNS if c in present]))
    return frame


# --- the result --------------------------------------------------------------------------------


def long_frame(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The codes' long frames as one, dates as datetime64[ns], sorted by (series, date)."""
    frame = pd.concat(frames, ignore_index=True)
    # Caches written by other versions may hold dates as text or in another unit.
    frame[DATE] = pd.to_datetime(frame[DATE]).astype("datetime64[ns]")
    return frame.sort_values([SERIES, DATE], ignore_index=True, kind="stable")


def stale_line(stale: Mapping[str, str], total: int) -> str:
    """"universe: 2 of 300 codes from stale caches (their fetch failed): 600000.SH (why), ..."."""
    named = [f"{code} ({why})" for code, why in list(stale.items())[:NAMED_STALE]]
    more = len(stale) - len(named)
    return (f"universe: {len(stale)} of {total} codes from stale caches (their fetch failed): "
            f"{', '.join(named)}" + (f" and {more} more" if more else ""))


def _every_code_failed(codes: list[str], failed: Mapping[str, str], unavailable: set[str],
                       offline: bool) -> DataError:
    error = all_failed(codes, failed, unavailable)
    # Offline with no cache at all is "cannot be had here", as load_data says for one code.
    return DataUnavailable(str(error)) if offline else error
