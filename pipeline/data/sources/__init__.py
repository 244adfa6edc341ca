"""Data sources: name -> function(params) returning a pandas frame.

A source returns the data as it comes (fetch() validates it and caches what `cached` sources
return). Two layouts:

- series: one long series, dated (a `date` column or a DatetimeIndex) or indexed by a number;
- samples: independent fixed-length samples, one row per (sample, step), with `sample`, `step`
  and `split` columns (their train/val/test assignment is part of the task).

Register with @source("name"). `cached=True` keeps the frame on disk (see pipeline.data.cache);
`network=True` marks a source that can be unreachable: it raises SourceUnavailable, and fetch()
falls back to the cache; `hint` says how to make it available again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.errors import ConfigError, DataError

SourceFn = Callable[[Mapping[str, Any]], pd.DataFrame]


@dataclass(frozen=True)
class SourceInfo:
    name: str
    fn: SourceFn
    cached: bool = False
    network: bool = False
    hint: str = ""  # how to get this source working when it is unavailable


SOURCES: dict[str, SourceInfo] = {}


class SourceUnavailable(DataError):
    """The source cannot deliver right now (no network, no usable API): a cache may stand in.

    The message says why and how to fix it; it never contains a credential.
    """


def source(name: str, *, cached: bool = False, network: bool = False,
           hint: str = "") -> Callable[[SourceFn], SourceFn]:
    def register(fn: SourceFn) -> SourceFn:
        SOURCES[name] = SourceInfo(name=name, fn=fn, cached=cached, network=network, hint=hint)
        return fn

    return register


def source_info(name: str) -> SourceInfo:
    _load_builtin_sources()
    if name not in SOURCES:
        raise ConfigError(f"data.source={name!r}: unknown source; choose one of {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def _load_builtin_sources() -> None:
    # Imported here, not at the top, so `import pipeline.data` stays cheap; the tushare module
    # itself imports tushare (requests, lxml...) only when a stock fetch runs.
    from pipeline.data.sources import (  # noqa: F401
        files,
        samples,
        sst,
        synthetic,
        tushare_prices,
    )
