"""Fetch a universe of stock codes one code at a time: an index's members, then each code's bars.

    index_members(api, "000300.SH")          -> ["000001.SZ", ..., "688981.SH"]
    fetch_universe(codes, stock_fetcher(p))  -> UniverseFetch(frame, failed, fetched)

Why one code at a time: the baostock server blacklisted a client that held several sessions at
once, and tushare's pro API counts calls per minute per token; a sequential loop with backoff on
a refusal is the polite client both ask for. A code that fails for another reason (a refused
token, a bad reply, a delisted code) is recorded with its one-line reason and the loop goes on,
so one bad code does not cost the other 299.

The result is the long frame pipeline.data.universe reads (date, series, value columns). This
module is a library step: no data config calls it yet, and it does not cache (the caller keeps
the frame, e.g. as Parquet).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipeline.data.sources import SourceUnavailable, tushare_prices
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.secrets import scrub_text

log = logging.getLogger(__name__)

DATE, SERIES = "date", "series"
# tushare's pro API refuses a call over its per-minute quota with a bare Exception whose text is
# "抱歉，您每分钟最多访问该接口N次..."; HTTP front ends say "too many requests" (429). Either
# means "wait and ask again", unlike any other refusal. Compared in lower case.
RATE_LIMIT_MARKERS = ("抱歉，您每分钟最多访问该接口", "每分钟最多访问", "too many requests")
# index_weight is published about monthly; a quarter back from the date always holds at least
# one snapshot, and ~300 members x 3 snapshots stays under tushare's rows-per-call cap.
MEMBERS_LOOKBACK_DAYS = 92
# How many failed codes the summary line names; UniverseFetch.failed holds them all.
NAMED_FAILURES = 5
# A stock code as the pro API spells it; BJ for the Beijing exchange (tushare_prices.exchange_code).
TS_CODE = re.compile(r"(?P<code>\d{6})\.(SH|SZ|BJ)")
# The stock params a fetcher takes from its caller; code, index and ts_code come from each code.
FETCHER_PARAMS = ("start", "end", "api", "timeout", "page_rows")

FetchOne = Callable[[str], pd.DataFrame]


@dataclass(frozen=True)
class UniverseFetch:
    frame: pd.DataFrame  # long: date, series, value columns; sorted by (series, date)
    failed: dict[str, str] = field(default_factory=dict)  # code -> its one-line reason
    fetched: list[str] = field(default_factory=list)  # codes whose bars are in `frame`, in order


# --- an index's members ------------------------------------------------------------------------


def index_members(api: tushare_prices.PriceApi, index_code: str,
                  on_or_before: str | None = None) -> list[str]:
    """The index's constituents (ts_codes, sorted) at its latest index_weight snapshot on or
    before `on_or_before` (default: today)."""
    end = _member_date(on_or_before)
    start = end - pd.Timedelta(days=MEMBERS_LOOKBACK_DAYS)
    where = f"index {index_code} {start:%Y-%m-%d}..{end:%Y-%m-%d}"
    reply = _query_weights(api, index_code, start, end, where)
    missing = [c for c in ("con_code", "trade_date") if c not in reply.columns]
    if missing:
        raise DataError(f"{where}: the tushare index_weight reply lacks column(s) "
                        f"{', '.join(missing)}; got {', '.join(map(str, reply.columns))}")
    # The API is asked for the window only, but a reply (or a fake) may hold later snapshots.
    dates = reply["trade_date"].astype(str)
    reply = reply[dates <= f"{end:%Y%m%d}"]
    if reply.empty:
        # An HTTP error reaches us as an empty reply too, so this may be a network problem.
        raise SourceUnavailable(f"{where}: tushare's index_weight returned no members (a wrong "
                                "index code, no snapshot in those dates, or an HTTP error); check "
                                "the index code (e.g. 000300.SH) and the date, and retry")
    latest = reply["trade_date"].astype(str).max()
    members = reply.loc[reply["trade_date"].astype(str) == latest, "con_code"].astype(str)
    log.info("%s: %d members on %s", index_code, members.nunique(), latest)
    return sorted(set(members))


def _member_date(on_or_before: str | None) -> pd.Timestamp:
    if on_or_before in (None, ""):
        return pd.Timestamp.today().normalize()
    try:
        return pd.Timestamp(str(on_or_before)).normalize()
    except ValueError:
        raise ConfigError(f"on_or_before={on_or_before!r}: not a date; use YYYY-MM-DD") from None


def _query_weights(api: tushare_prices.PriceApi, index_code: str, start: pd.Timestamp,
                   end: pd.Timestamp, where: str) -> pd.DataFrame:
    import requests

    try:
        return api.query("index_weight", index_code=index_code, start_date=f"{start:%Y%m%d}",
                         end_date=f"{end:%Y%m%d}")
    except requests.RequestException as exc:
        raise SourceUnavailable(f"{where}: cannot reach the tushare pro API "
                                f"({type(exc).__name__}); check the network") from None
    except Exception as exc:  # tushare raises a bare Exception(msg) for every API-side error
        raise DataError(f"{where}: the tushare pro API refused index_weight: {one_line(exc)}; "
                        f"check that {tushare_prices.TOKEN_ENV} is valid and allowed to call "
                        "index_weight") from None


# --- the fetch loop ----------------------------------------------------------------------------


def is_rate_limited(error: BaseException) -> bool:
    """Whether the error is a per-minute quota refusal: worth waiting for, not a failure."""
    text = str(error).lower()
    return any(marker in text for marker in RATE_LIMIT_MARKERS)


def is_retryable(error: BaseException) -> bool:
    """Unreachable or rate-limited: the same call may work a little later."""
    return isinstance(error, SourceUnavailable) or is_rate_limited(error)


def fetch_universe(codes: Sequence[str], fetch_one: FetchOne, *, attempts: int = 4,
                   backoff_s: float = 1.0, sleep: Callable[[float], Any] = time.sleep,
                   progress: bool = True) -> UniverseFetch:
    """Every code's frame through `fetch_one`, one code after another.

    A retryable error (SourceUnavailable, a rate-limit refusal) is retried up to `attempts`
    calls in all, waiting backoff_s, 2 x backoff_s, 4 x backoff_s, ... between them; any other
    PipelineError records the code as failed. Anything else is a bug and propagates.
    """
    if attempts < 1:
        raise ConfigError(f"attempts={attempts!r}: must be at least 1")
    if backoff_s < 0:
        raise ConfigError(f"backoff_s={backoff_s!r}: must not be negative")
    todo = list(dict.fromkeys(str(c) for c in codes))  # a repeated code is fetched once
    if not todo:
        raise ConfigError("universe: no codes to fetch; pass at least one ts_code, e.g. 600000.SH")
    frames: list[pd.DataFrame] = []
    failed: dict[str, str] = {}
    unavailable: set[str] = set()
    for code in progress_over(todo, progress):
        try:
            frames.append(as_long(fetch_with_backoff(code, fetch_one, attempts, backoff_s, sleep),
                                   code))
        except PipelineError as exc:
            failed[code] = one_line(exc)
            if isinstance(exc, SourceUnavailable):
                unavailable.add(code)
    fetched = [code for code in todo if code not in failed]
    log.log(logging.WARNING if failed else logging.INFO, summary(len(fetched), len(todo), failed))
    if not fetched:
        raise all_failed(todo, failed, unavailable)
    frame = pd.concat(frames, ignore_index=True).sort_values([SERIES, DATE], ignore_index=True,
                                                             kind="stable")
    return UniverseFetch(frame=frame, failed=failed, fetched=fetched)


def fetch_with_backoff(code: str, fetch_one: FetchOne, attempts: int, backoff_s: float,
                        sleep: Callable[[float], Any]) -> pd.DataFrame:
    for attempt in range(1, attempts + 1):
        try:
            return fetch_one(code)
        except PipelineError as exc:
            if not is_retryable(exc):
                raise
            if attempt == attempts:
                # A code that stayed unreachable is still "unavailable", not a bad request.
                kind = SourceUnavailable if isinstance(exc, SourceUnavailable) else DataError
                raise kind(f"gave up after {attempts} attempts: {one_line(exc)}") from None
            wait = backoff_s * 2 ** (attempt - 1)
            log.info("%s: attempt %d of %d refused (%s); retrying in %.3gs", code, attempt,
                     attempts, one_line(exc), wait)
            sleep(wait)
    raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


def as_long(frame: pd.DataFrame, code: str) -> pd.DataFrame:
    """One code's frame -> date, series, value columns; `series` is always the code asked for."""
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise DataError(f"{code}: the fetch returned no rows; check the code and the date range")
    if DATE not in frame.columns and frame.index.name == DATE:
        frame = frame.reset_index()
    if DATE not in frame.columns:
        raise DataError(f"{code}: the fetched frame has no {DATE!r} column; got "
                        f"{', '.join(map(str, frame.columns))}")
    values = [c for c in frame.columns if c not in (DATE, SERIES)]
    return frame.assign(**{SERIES: code})[[DATE, SERIES, *values]]


def progress_over(codes: list[str], enabled: bool):
    """The codes, with a tqdm bar naming the current code when enabled."""
    if not enabled:
        yield from codes
        return
    from tqdm.auto import tqdm

    with tqdm(codes, desc="universe", unit="code") as bar:
        for code in bar:
            bar.set_postfix_str(code, refresh=False)
            yield code


def summary(fetched: int, total: int, failed: Mapping[str, str]) -> str:
    """"universe: 298 of 300 codes fetched; failed: 600001.SH (reason), ..." on one line."""
    line = f"universe: {fetched} of {total} codes fetched"
    if not failed:
        return line
    named = [f"{code} ({reason})" for code, reason in list(failed.items())[:NAMED_FAILURES]]
    more = len(failed) - len(named)
    return f"{line}; failed: {', '.join(named)}" + (f" and {more} more" if more else "")


def all_failed(codes: list[str], failed: Mapping[str, str], unavailable: set[str]) -> DataError:
    first = codes[0]
    message = (f"universe: all {len(codes)} codes failed; first: {first} ({failed[first]}); "
               "fix that reason and fetch again")
    # Every code unreachable is "no network" (a caller may fall back to a cache); otherwise the
    # requests themselves are wrong.
    return SourceUnavailable(message) if set(codes) == unavailable else DataError(message)


def one_line(error: BaseException | str) -> str:
    """An error's text on one line, with any secret (TUSHARE_TOKEN's value) removed."""
    return " ".join(scrub_text(str(error)).split()) or type(error).__name__


# --- the stock source as a fetch_one -----------------------------------------------------------


def stock_fetcher(params: Mapping[str, Any]) -> FetchOne:
    """fetch_one for fetch_universe: a ts_code (600000.SH) -> its daily bars through the stock
    source's own path (api auto/pro/baostock as data.params.api says), with a series column.

    `params` gives start, end, api, timeout and page_rows (the stock schema's defaults fill the
    rest); code, index and ts_code come from each code.
    """
    from pipeline.config import source_params  # lazy: pipeline.config pulls in Hydra and models

    shared = source_params("stock", {k: params[k] for k in FETCHER_PARAMS if k in params})

    def fetch_one(code: str) -> pd.DataFrame:
        six, ts_code = split_ts_code(code)
        bars = tushare_prices.stock_bars({**shared, "code": six, "ts_code": ts_code, "index": False})
        return bars.assign(**{SERIES: ts_code})

    return fetch_one


def split_ts_code(code: str) -> tuple[str, str]:
    """600000.SH -> (600000, 600000.SH); a bare 600000 gets its exchange like the stock source's."""
    code = str(code).strip().upper()
    if re.fullmatch(r"\d{6}", code):
        return code, tushare_prices.exchange_code(code, index=False)
    match = TS_CODE.fullmatch(code)
    if match is None:
        raise ConfigError(f"stock code {code!r}: expected a ts_code like 600000.SH (six digits "
                          "and SH, SZ or BJ)")
    return match["code"], code
