"""The user's own series: a CSV or Parquet file with a date column and value columns.

This is how users bring their data, and how an offline machine trains on real prices (export
them once, train from the file). Files are read as users have them: a broker's or NetEase's
export is often GBK-encoded, newest row first, with Chinese headers (日期, 收盘价), numbers with
thousands separators ("3,245.67") and codes written as '000001. The encoding is detected unless
data.params.encoding names it; validation sorts the rows by date; `thousands` strips the
separators. Which columns are dates, inputs and targets is config (data.date_column,
data.inputs, data.targets).
"""

from __future__ import annotations

import codecs
import io
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.sources import source
from pipeline.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
# Enough of the file to tell its encoding: headers and the first rows hold the non-ASCII text.
DETECT_BYTES = 64 * 1024
_BOMS = {b"\xef\xbb\xbf": "utf-8-sig", b"\xff\xfe": "utf-16", b"\xfe\xff": "utf-16"}
# GB18030 (GBK's superset) is the encoding of the mainland exports this reader is for, and
# charset-normalizer misreads them: a NetEase export (日期,股票代码,名称,...,贵州茅台) comes back as
# ptcp154 (Cyrillic), a file whose only Chinese is its headers (日期,收盘价) as Big5. So a file is
# read as GB18030 when it decodes so and nearly all its non-ASCII characters are common Chinese
# ones (GB2312's); a Latin-1 file that happens to decode (Schlußkurs) is not.
CHINESE_SHARE = 0.9
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Text encodings whose text holds NUL bytes: elsewhere a NUL means a binary file.
_WIDE = ("utf-16", "utf-32")


@source("csv")
def read_table(params: Mapping[str, Any]) -> pd.DataFrame:
    path = Path(str(params["path"])).expanduser()
    if not path.is_file():
        raise DataError(f"csv {path}: no such file (relative paths start at {Path.cwd()}); "
                        "set data.params.path to your CSV or Parquet file")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _read_parquet(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"csv {path}: the file is empty; export the data again (a header row, "
                        "then one row per date)")
    chosen = params["encoding"]
    if chosen and not codecs.lookup(chosen).name.startswith(_WIDE):
        _refuse_binary(raw, path)
    encoding = chosen or detect_encoding(raw, path)
    return parse_csv(decode(raw, encoding, path, detected=not chosen), path,
                     sep=params["sep"], thousands=params["thousands"])


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for one cause: an unreadable file
        raise DataError(f"csv {path}: cannot read it as Parquet ({type(exc).__name__}: "
                        f"{_first_line(exc)}); check the file, or export it again") from None


def detect_encoding(raw: bytes, path: Path) -> str:
    """A BOM's encoding; else UTF-8 when it decodes (most files, and every ASCII one); else
    GB18030 when the text reads as Chinese (GBK exports); else charset-normalizer's best guess."""
    for bom, name in _BOMS.items():
        if raw.startswith(bom):
            return name
    _refuse_binary(raw, path)
    try:
        raw.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    if reads_as_chinese(raw):
        return "gb18030"
    from charset_normalizer import from_bytes

    best = from_bytes(raw[:DETECT_BYTES]).best()
    if best is None:
        raise DataError(f"csv {path}: cannot tell its text encoding; set it, e.g. "
                        "data.params.encoding=gbk")
    return best.encoding


def reads_as_chinese(raw: bytes) -> bool:
    """Whether `raw` is GB18030 text: it decodes, and its non-ASCII is mostly common Chinese."""
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        return False
    wide = Counter(_NON_ASCII.findall(text))
    common = sum(n for char, n in wide.items() if _in_gb2312(char))
    return bool(wide) and common >= CHINESE_SHARE * sum(wide.values())


def _in_gb2312(char: str) -> bool:
    try:
        char.encode("gb2312")
        return True
    except UnicodeEncodeError:
        return False


def _refuse_binary(raw: bytes, path: Path) -> None:
    if b"\x00" in raw[:DETECT_BYTES]:
        raise DataError(f"csv {path}: looks like a binary file (it holds NUL bytes; an Excel "
                        "workbook?), not a CSV; save it as CSV, or name a .parquet file")


def decode(raw: bytes, encoding: str, path: Path, detected: bool) -> str:
    try:
        # A BOM read as plain utf-8 would stay glued to the first header ('\ufeff日期').
        return raw.decode(encoding).removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        how = "detected" if detected else "set in data.params.encoding"
        raise DataError(f"csv {path}: not valid {encoding} ({how}) at byte {exc.start}; "
                        f"{_encoding_advice(raw, path, encoding, detected)}") from None


def _encoding_advice(raw: bytes, path: Path, failed: str, detected: bool) -> str:
    """The encoding to set: the detected one, when the user's choice failed and detection reads it."""
    if not detected:
        try:
            found = detect_encoding(raw, path)
            raw.decode(found)
        except (DataError, UnicodeDecodeError):
            found = None
        if found and codecs.lookup(found).name != codecs.lookup(failed).name:
            return (f"it reads as {found}: set data.params.encoding={found}, or "
                    "data.params.encoding=null to detect it")
    return "set the file's encoding, e.g. data.params.encoding=gbk or data.params.encoding=utf-8"


def parse_csv(text: str, path: Path, sep: str, thousands: str | None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, thousands=thousands, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"csv {path}: cannot parse it as CSV ({_first_line(exc)}); check "
                        f"data.params.sep (now {sep!r})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            frame[column] = _unquoted(_ungrouped(frame[column], thousands))
    return frame


def _unquoted(values: pd.Series) -> pd.Series:
    """Exports write codes as '000001 so spreadsheets keep the zeros: the quote is not data."""
    given = values.dropna().astype(str)  # an empty cell holds no quote, and stays empty
    if len(given) and given.str.startswith("'").all():
        return values.where(values.isna(), values.astype(str).str.lstrip("'"))
    return values


def _ungrouped(values: pd.Series, thousands: str | None) -> pd.Series:
    """Drop thousands separators ("3,245.67" -> "3245.67") in a column pandas left as text.
    pandas drops them only in a column that is all numbers; one "停牌" (suspended) or "--" keeps
    every cell as text, and validation would then name the first "3,245.67", not the bad cell."""
    if not thousands:
        return values
    grouped = values.astype(str).str.fullmatch(
        rf"\s*[+-]?\d{{1,3}}(?:{re.escape(thousands)}\d{{3}})+(?:\.\d*)?\s*") & values.notna()
    if not grouped.any():
        return values
    return values.where(~grouped, values.astype(str).str.replace(thousands, "", regex=False))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
