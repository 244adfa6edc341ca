"""Data sources: name -> function(params) returning a pandas frame.

A source returns a frame sorted by its index (a DatetimeIndex named `date` for real series,
a numeric index for synthetic ones) with float value columns. Register with @source("name").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from pipeline.errors import ConfigError

SourceFn = Callable[[Mapping[str, Any]], pd.DataFrame]
SOURCES: dict[str, SourceFn] = {}


def source(name: str) -> Callable[[SourceFn], SourceFn]:
    def register(fn: SourceFn) -> SourceFn:
        SOURCES[name] = fn
        return fn

    return register


def get_source(name: str) -> SourceFn:
    _load_builtin_sources()
    if name not in SOURCES:
        raise ConfigError(f"data.source={name!r}: unknown source; choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def _load_builtin_sources() -> None:
    # Imported lazily so `import pipeline.data` stays cheap (tushare pulls in requests, lxml...).
    from pipeline.data.sources import synthetic  # noqa: F401
