"""Daily bars (open, high, low, close, volume) of a Chinese stock or index: tushare or baostock.

Three ways in, chosen by data.params.api (auto: pro when TUSHARE_TOKEN is set, else baostock):

- pro: tushare's pro API. Its only HTTP call is DataApi.query(api_name, fields, **params); we call
  that method directly on an api object, `PriceApi`, which is our one seam: `connect()` builds
  the real client, tests hand in a fake whose query() returns frames shaped like tushare's
  replies. (tushare's own pro_bar would also accept api=, but it catches every exception,
  prints it and retries, which hides the difference between "no network" and "bad token".)
- baostock: no token, an anonymous login over TCP port 10030; see
  pipeline.data.sources.baostock_prices (its own seam, one session at a time).
- legacy: tushare.get_k_data, no token, only when asked for (api=legacy). It calls
  DataFrame.append, which pandas 2 removed; the attribute lookup fails before any request is
  sent, and we turn that into one line.

The token is read from the environment when a fetch runs and handed only to tushare's client:
it is never part of params (so never in the cache key or manifest), and every message we build
from tushare's text has it removed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol

import pandas as pd

from pipeline.data.sources import SourceUnavailable, baostock_prices, source
from pipeline.data.sources.bars import BarRequest
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TOKEN_ENV = "TUSHARE_TOKEN"
# A reply this long may be a truncated page (tushare caps rows per call: 6000 for daily,
# 8000 for index_daily); ask again for the older rows.
DEFAULT_PAGE_ROWS = 5000
RENAMES = {"trade_date": "date", "vol": "volume"}
FIX_HINT = (f"check that baostock (TCP port {baostock_prices.BAOSTOCK_PORT}) is reachable, or set "
            f"{TOKEN_ENV} in the environment to use tushare's pro API")
API_NAMES = {"pro": "tushare's pro API", "baostock": "baostock",
             "legacy": "tushare's legacy get_k_data"}


class PriceApi(Protocol):
    """The part of tushare's pro client we use: DataApi.query, its only HTTP call."""

    def query(self, api_name: str, fields: str = "", **kwargs: Any) -> pd.DataFrame: ...


def connect(token: str, timeout: float) -> PriceApi:
    """The real pro client (tests replace this function to hand in a fake api object)."""
    from tushare.pro.client import DataApi

    return DataApi(token=token, timeout=timeout)


@source("stock", cached=True, network=True, hint=FIX_HINT)
def stock_bars(params: Mapping[str, Any]) -> pd.DataFrame:
    request = bar_request(params)
    token = os.environ.get(TOKEN_ENV, "").strip()
    api, why = choose_api(params["api"], token)
    if api == "pro" and not token:
        raise SourceUnavailable(f"stock {request.ts_code}: data.params.api=pro needs {TOKEN_ENV} "
                                "in the environment")
    log.info("stock %s: fetching through %s (%s)", request.ts_code, API_NAMES[api], why)
    timeout = float(params["timeout"])
    if api == "pro":
        return pro_bars(connect(token, timeout), request, int(params["page_rows"]), secret=token)
    if api == "baostock":
        return baostock_prices.baostock_bars(baostock_prices.connect(timeout), request)
    return legacy_bars(request)


def choose_api(choice: str, token: str) -> tuple[str, str]:
    """data.params.api -> (the API to use, why, for the log); auto needs no token to work."""
    if choice != "auto":
        return choice, f"data.params.api={choice}"
    if token:
        return "pro", f"{TOKEN_ENV} is set"
    return "baostock", f"no {TOKEN_ENV} set"


def bar_request(params: Mapping[str, Any]) -> BarRequest:
    """The request the params describe (pipeline.config checked the code, the api and the dates)."""
    code = str(params["code"])
    index = bool(params["index"])
    ts_code = params["ts_code"] or exchange_code(code, index)
    start = _date_param(params, "start", None)
    end = _date_param(params, "end", pd.Timestamp.today().normalize())
    if start is not None and start > end:  # an open end (today) can still precede a future start
        raise ConfigError(f"data.params.start={start:%Y-%m-%d}: must not be after "
                          f"data.params.end={end:%Y-%m-%d}")
    return BarRequest(code=code, ts_code=ts_code, index=index,
                      start=start if start is not None else pd.Timestamp("1990-01-01"), end=end)


def exchange_code(code: str, index: bool) -> str:
    """000001 + index -> 000001.SH (Shanghai Composite); 000001 as a stock -> 000001.SZ."""
    if index:
        exchanges = {"000": "SH", "399": "SZ"}
        suffix = exchanges.get(code[:3])
    else:
        suffix = {"6": "SH", "9": "SH", "0": "SZ", "2": "SZ", "3": "SZ", "4": "BJ", "8": "BJ"}.get(code[0])
    if suffix is None:
        raise ConfigError(f"data.params.code={code!r}: cannot tell its exchange; set "
                          "data.params.ts_code, e.g. 000300.SH")
    return f"{code}.{suffix}"


def _date_param(params: Mapping[str, Any], key: str, default: pd.Timestamp | None) -> pd.Timestamp | None:
    value = params.get(key)
    return default if value in (None, "") else pd.Timestamp(str(value))


# --- pro API -------------------------------------------------------------------------------


def pro_bars(api: PriceApi, request: BarRequest, page_rows: int = DEFAULT_PAGE_ROWS,
             secret: str = "") -> pd.DataFrame:
    """All daily bars in the request's range, oldest first, one row per trading day."""
    pages, end = [], request.end
    while True:
        page = _query(api, request, end, secret)
        if page.empty:
            break
        pages.append(page)
        oldest = pd.to_datetime(page["trade_date"], format="%Y%m%d", errors="coerce").min()
        if len(page) < page_rows or pd.isna(oldest) or oldest <= request.start:
            break
        end = oldest - pd.Timedelta(days=1)
    if not pages:
        # An HTTP error reaches us as an empty reply too, so this may be a network problem.
        raise SourceUnavailable(f"stock {request.describe()}: tushare's {request.api_name} returned "
                                "no rows (a wrong code or date range, or an HTTP error); check "
                                "data.params.code/start/end and retry")
    return normalise_reply(pd.concat(pages, ignore_index=True), request)


def _query(api: PriceApi, request: BarRequest, end: pd.Timestamp, secret: str) -> pd.DataFrame:
    import requests

    try:
        return api.query(request.api_name, fields="", ts_code=request.ts_code,
                         start_date=f"{request.start:%Y%m%d}", end_date=f"{end:%Y%m%d}")
    except requests.RequestException as exc:
        raise SourceUnavailable(f"stock {request.describe()}: cannot reach the tushare pro API "
                                f"({type(exc).__name__}); check the network") from None
    except Exception as exc:  # tushare raises a bare Exception(msg) for every API-side error
        message = _one_line(str(exc), secret)
        raise DataError(f"stock {request.describe()}: the tushare pro API refused "
                        f"{request.api_name}: {message}; check that {TOKEN_ENV} is valid and "
                        f"allowed to call {request.api_name}") from None


def normalise_reply(reply: pd.DataFrame, request: BarRequest) -> pd.DataFrame:
    """tushare's columns -> ours (date, open, high, low, close, volume, ...), oldest row first."""
    missing = [c for c in ("trade_date", "close") if c not in reply.columns]
    if missing:
        raise DataError(f"stock {request.describe()}: the tushare reply lacks column(s) "
                        f"{', '.join(missing)}; got {', '.join(map(str, reply.columns))}")
    frame = reply.drop(columns=["ts_code"], errors="ignore").rename(columns=RENAMES)
    dates = pd.to_datetime(frame["date"].astype(str), format="%Y%m%d", errors="coerce")
    if dates.isna().any():
        bad = frame["date"][dates.isna()].iloc[0]
        raise DataError(f"stock {request.describe()}: the tushare reply has an unparseable "
                        f"trade_date {bad!r} (expected YYYYMMDD)")
    frame["date"] = dates
    # Pages overlap by at most their boundary day; newest-first replies become oldest-first.
    return frame.drop_duplicates().sort_values("date", ignore_index=True)


# --- legacy API ----------------------------------------------------------------------------


def legacy_bars(request: BarRequest) -> pd.DataFrame:
    import tushare

    # tushare prints a deprecation notice and swallowed network errors to stdout; keep ours clean.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            reply = tushare.get_k_data(request.code, start=f"{request.start:%Y-%m-%d}",
                                       end=f"{request.end:%Y-%m-%d}", index=request.index,
                                       autype=None)
        except AttributeError as exc:
            if "append" not in str(exc):
                raise
            raise SourceUnavailable(
                f"stock {request.ts_code}: tushare's legacy get_k_data (data.params.api=legacy) "
                f"cannot run with pandas {pd.__version__}: it calls DataFrame.append, removed in "
                "pandas 2; use data.params.api=auto or baostock") from None
        except KeyError:
            raise ConfigError(f"data.params.code={request.code!r}: not an index tushare's legacy "
                              "API knows") from None
    if reply is None or reply.empty:
        raise SourceUnavailable(f"stock {request.describe()}: tushare's legacy get_k_data returned "
                                "no rows (no network, or a wrong code or date range)")
    frame = reply.drop(columns=["code"], errors="ignore")
    frame["date"] = pd.to_datetime(frame["date"], format="%Y-%m-%d")
    return frame.sort_values("date", ignore_index=True)


def _one_line(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "<redacted>")
    return " ".join(text.split()) or "no message"
