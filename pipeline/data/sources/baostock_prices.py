"""Daily bars of a Chinese stock or index through baostock: no token, an anonymous login.

The stock source (pipeline.data.sources.tushare_prices) uses this when TUSHARE_TOKEN is not set,
or when data.params.api=baostock. baostock speaks its own protocol over raw TCP to port 10030
(not HTTP, so no proxy settings apply). Our one seam is `connect()`: it returns an object with
baostock's login(), query_history_k_data_plus(...) and logout(); tests replace it with a fake
whose replies have baostock's shape (a ResultData: error_code, error_msg, fields, and rows of
strings read with `while rs.next(): rs.get_row_data()`).

What baostock does that shapes this module:
- it never raises on a network failure: it prints the error and returns a ResultData whose
  error_code is one of its 10002xxx network codes, so those codes mean "unreachable";
- every value is a string, and a suspended day can have empty strings;
- it keeps one connection in module globals, so a process can hold only one session at a time;
- it prints "login success!" and its errors to stdout, which the real client swallows.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import pandas as pd

from pipeline.data.sources import SourceUnavailable
from pipeline.data.sources.bars import BarRequest
from pipeline.errors import ConfigError, DataError

BAOSTOCK_PORT = 10030
FIELDS = ("date", "open", "high", "low", "close", "volume")
NUMERIC_FIELDS = FIELDS[1:]
OK = "0"
# baostock's own codes for a failed connect, send or receive (baostock.common.contants, 10002xxx):
# a reply with one of these is a network problem, not a refusal of the request.
NETWORK_ERROR_PREFIX = "10002"
# baostock reports volume in shares, tushare's pro API in lots of 100; both paths share one
# cache key (data.params.api=auto), so the column must mean the same thing whichever filled it.
SHARES_PER_LOT = 100
EXCHANGES = {"SH": "sh", "SZ": "sz"}

# The baostock server blacklisted clients that held several sessions at once (concurrency 8),
# and baostock's client keeps its one socket in module globals anyway: every session in this
# process (login, queries, logout) runs under this lock, one after another.
_SESSION_LOCK = threading.Lock()


class BaostockReply(Protocol):
    """The part of baostock's ResultData we read."""

    error_code: str
    error_msg: str
    fields: list[str]

    def next(self) -> bool: ...

    def get_row_data(self) -> list[str]: ...


class BaostockApi(Protocol):
    """The part of the baostock module we call."""

    def login(self) -> BaostockReply: ...

    def query_history_k_data_plus(self, code: str, fields: str, start_date: str, end_date: str,
                                  frequency: str, adjustflag: str) -> BaostockReply: ...

    def logout(self) -> Any: ...


def connect(timeout: float) -> BaostockApi:
    """The real client (tests replace this function to hand in a fake api object)."""
    return QuietBaostock(timeout)


class QuietBaostock:
    """The baostock module with its prints swallowed and a timeout on its socket."""

    def __init__(self, timeout: float) -> None:
        import baostock

        self._bs = baostock
        self._timeout = timeout

    def login(self) -> BaostockReply:
        # baostock opens its socket inside login() and sets no timeout, so a silent server would
        # hang the fetch; a socket takes the default timeout when it is created, so setting the
        # default for the length of login() covers every later call on that socket.
        with _quiet(), _default_timeout(self._timeout):
            return self._bs.login()

    def query_history_k_data_plus(self, code: str, fields: str, start_date: str, end_date: str,
                                  frequency: str, adjustflag: str) -> BaostockReply:
        with _quiet():
            reply = self._bs.query_history_k_data_plus(code, fields, start_date=start_date,
                                                       end_date=end_date, frequency=frequency,
                                                       adjustflag=adjustflag)
        return QuietReply(reply)

    def logout(self) -> Any:
        with _quiet():
            try:
                return self._bs.logout()
            finally:
                self._close_socket()

    @staticmethod
    def _close_socket() -> None:
        # baostock's logout closes its socket only when the server answered; after a failed login
        # the socket would stay open until the process ends.
        import baostock.common.context as context

        sock = getattr(context, "default_socket", None)
        if sock is not None:
            sock.close()
            context.default_socket = None


class QuietReply:
    """A ResultData whose next() (which may ask the server for the next page) prints nothing."""

    def __init__(self, reply: Any) -> None:
        self._reply = reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reply, name)

    def next(self) -> bool:
        with _quiet():
            return self._reply.next()

    def get_row_data(self) -> list[str]:
        return self._reply.get_row_data()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _default_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# --- fetching ------------------------------------------------------------------------------


def baostock_code(request: BarRequest) -> str:
    """000001.SH -> sh.000001, 000001.SZ -> sz.000001; Beijing (BJ) codes are not served."""
    code, _, suffix = request.ts_code.partition(".")
    if suffix == "BJ":
        raise ConfigError(f"data.params.code={request.code!r}: {request.ts_code} trades in Beijing, "
                          "which baostock does not serve; set TUSHARE_TOKEN and "
                          "data.params.api=pro to fetch it")
    if suffix not in EXCHANGES or not (len(code) == 6 and code.isdigit()):
        raise ConfigError(f"data.params.ts_code={request.ts_code!r}: baostock needs a six-digit "
                          "code on SH or SZ, e.g. 000300.SH")
    return f"{EXCHANGES[suffix]}.{code}"


def baostock_bars(api: BaostockApi, request: BarRequest) -> pd.DataFrame:
    """All daily bars in the request's range, oldest first: date, open, high, low, close, volume."""
    code = baostock_code(request)
    with _SESSION_LOCK:
        try:
            try:
                _login(api, request)
                fields, rows = _query(api, request, code)
            finally:
                _logout(api)
        except OSError as exc:  # a fake, or a future baostock, may let a socket error through
            raise SourceUnavailable(_unreachable(request, type(exc).__name__)) from None
    if not rows:
        raise SourceUnavailable(f"stock {request.describe()}: baostock returned no rows for {code} "
                                "(a wrong code or date range, or a dropped connection); check "
                                "data.params.code/index/start/end and retry")
    return normalise_rows(fields, rows, request)


def _login(api: BaostockApi, request: BarRequest) -> None:
    reply = api.login()
    if reply.error_code != OK:
        raise SourceUnavailable(_unreachable(request, f"login failed: {_reason(reply)}"))


def _query(api: BaostockApi, request: BarRequest, code: str) -> tuple[list[str], list[list[str]]]:
    reply = api.query_history_k_data_plus(code, ",".join(FIELDS),
                                          start_date=f"{request.start:%Y-%m-%d}",
                                          end_date=f"{request.end:%Y-%m-%d}",
                                          frequency="d", adjustflag="3")  # 3: unadjusted, as tushare
    _check(reply, request, code)
    rows = []
    while reply.next():
        rows.append(reply.get_row_data())
    _check(reply, request, code)  # next() fetches later pages, and records their errors here
    return list(reply.fields), rows


def _check(reply: BaostockReply, request: BarRequest, code: str) -> None:
    if reply.error_code == OK:
        return
    if str(reply.error_code).startswith(NETWORK_ERROR_PREFIX):
        raise SourceUnavailable(_unreachable(request, _reason(reply)))
    raise DataError(f"stock {request.describe()}: baostock refused query_history_k_data_plus for "
                    f"{code}: {_reason(reply)}; check data.params.code/index/start/end")


def _logout(api: BaostockApi) -> None:
    # The bars (or the error) are what matter; a failed logout must not replace them.
    with contextlib.suppress(OSError):
        api.logout()


def _unreachable(request: BarRequest, why: str) -> str:
    return (f"stock {request.describe()}: cannot reach baostock (TCP port {BAOSTOCK_PORT}): {why}; "
            "check the network and that outgoing TCP to that port is allowed")


def _reason(reply: BaostockReply) -> str:
    message = " ".join(str(reply.error_msg or "").split()) or "no message"
    return f"{message} (error {reply.error_code})"


def normalise_rows(fields: list[str], rows: list[list[str]], request: BarRequest) -> pd.DataFrame:
    """baostock's string rows -> our typed columns, without suspended days, oldest row first."""
    missing = [f for f in FIELDS if f not in fields]
    if missing:
        raise DataError(f"stock {request.describe()}: the baostock reply lacks field(s) "
                        f"{', '.join(missing)}; got {', '.join(map(str, fields))}")
    frame = pd.DataFrame(rows, columns=fields)[list(FIELDS)]
    frame = frame[frame["close"].str.strip() != ""].copy()  # a suspended day has no close
    frame["date"] = _dates(frame["date"], request)
    for column in NUMERIC_FIELDS:
        frame[column] = _numbers(frame[column], column, request)
    frame["volume"] = frame["volume"] / SHARES_PER_LOT
    return frame.drop_duplicates().sort_values("date", ignore_index=True)


def _dates(values: pd.Series, request: BarRequest) -> pd.Series:
    dates = pd.to_datetime(values, format="%Y-%m-%d", errors="coerce")
    if dates.isna().any():
        raise DataError(f"stock {request.describe()}: the baostock reply has an unparseable date "
                        f"{values[dates.isna()].iloc[0]!r} (expected YYYY-MM-DD)")
    return dates


def _numbers(values: pd.Series, column: str, request: BarRequest) -> pd.Series:
    blank = values.str.strip() == ""  # stays NaN: validation and data.fill decide about gaps
    numbers = pd.to_numeric(values.where(~blank), errors="coerce").astype("float64")
    bad = numbers.isna() & ~blank
    if bad.any():
        raise DataError(f"stock {request.describe()}: the baostock reply has a non-numeric {column} "
                        f"{values[bad].iloc[0]!r}")
    return numbers
