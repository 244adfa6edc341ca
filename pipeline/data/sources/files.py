"""The user's own series: a CSV or Parquet file with a date column and value columns.

This is how users bring their data, and how an offline machine trains on real prices (export
them once, train from the file). Which columns are dates, inputs and targets is config
(data.date_column, data.inputs, data.targets); validation checks them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.sources import source
from pipeline.errors import ConfigError, DataError

PARQUET_SUFFIXES = (".parquet", ".pq")


@source("csv")
def read_table(params: Mapping[str, Any]) -> pd.DataFrame:
    path = _required_path(params)
    if not path.is_file():
        raise DataError(f"csv {path}: no such file (relative paths start at {Path.cwd()}); "
                        "set data.params.path to your CSV or Parquet file")
    try:
        if path.suffix.lower() in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=params.get("sep", ","))
    except Exception as exc:  # pandas/pyarrow raise many types for one cause: an unreadable file
        raise DataError(f"csv {path}: cannot read it ({type(exc).__name__}: {_first_line(exc)}); "
                        "check that it is a valid CSV or Parquet file") from None


def _required_path(params: Mapping[str, Any]) -> Path:
    path = params.get("path")
    if not path:
        raise ConfigError("data.params.path is not set: point it at your CSV or Parquet file, e.g. "
                          "make train ARGS=\"data=csv data.params.path=prices.csv\"")
    return Path(str(path)).expanduser()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no details"
