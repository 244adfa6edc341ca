"""The fetch stage: a data config -> a validated pandas frame plus its content digest.

    source (or cache) -> validate -> FetchResult

Sources registered with cached=True are kept under data.cache_dir (see pipeline.data.cache).
A valid cache is used as is, unless the source is a network one and the cache is stale
(cache.is_fresh) or data.refresh=true. data.offline=true, or a network source that is
unreachable, trains from the cache and says so in one line. A frame is cached only after it
passed validation, so a bad reply never replaces a good cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.config import DataConfig
from pipeline.data import cache
from pipeline.data.digest import frame_digest
from pipeline.data.sources import SourceInfo, SourceUnavailable, source_info
from pipeline.data.validation import Rules, rules_from_config, validate
from pipeline.errors import DataUnavailable
from pipeline.secrets import redact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchResult:
    frame: pd.DataFrame
    digest: str
    source: str
    from_cache: bool = False
    cache_path: Path | None = None  # the Parquet file holding this data, for cached sources
    manifest: Mapping[str, Any] | None = None
    notice: str | None = None  # one line on why the data came from the cache, if it had to
    label: str = ""  # how messages name the data: the source plus its file or code

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.source)


def load_data(data: DataConfig) -> FetchResult:
    """The source's frame (or its cache), validated; `data.params` are the source's checked params."""
    name = data.source
    info = source_info(name)
    params = dict(data.params)
    rules = rules_from_config(data, source_label(name, params))
    if not info.cached:
        frame = validate(info.fn(params), rules)
        return FetchResult(frame=frame, digest=frame_digest(frame), source=name, label=rules.label)
    slot = cache.cache_slot(data.cache_dir, name, public_params(params))
    return _fetch_cached(info, params, rules, slot, config_name=data.name, offline=data.offline,
                         refresh=data.refresh)


def public_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as they may be hashed into cache names and written to manifests: anything named
    like a credential (or holding a secret's value) is replaced, whatever its value was."""
    return redact(dict(params))


def source_label(name: str, params: Mapping[str, Any]) -> str:
    """How messages name the data: the source plus the file or code it reads."""
    detail = next((params[k] for k in ("path", "ts_code", "code") if params.get(k)), None)
    return f"{name} {detail}" if detail is not None else name


def _fetch_cached(info: SourceInfo, params: dict[str, Any], rules: Rules, slot: cache.CacheSlot,
                  config_name: str, offline: bool, refresh: bool) -> FetchResult:
    cached, problem = _load_quietly(slot)
    if offline and info.network:
        if cached is None:
            raise DataUnavailable(f"{rules.label}: data.offline=true but "
                            f"{problem or f'there is no cache at {slot.manifest_path}'}; "
                            f"{_fix_hint(None, config_name, slot)}")
        return _from_cache(cached, info, rules, _cache_notice(f"{rules.label}: data.offline=true", cached))
    if cached is not None and not refresh and (not info.network or cache.is_fresh(cached, params)):
        log.debug("%s: using the cache fetched %s (%s)", rules.label, cached.fetched_at, cached.path)
        return _from_cache(cached, info, rules, notice=None)
    if problem:
        log.warning("%s; fetching again", problem)
    try:
        raw = info.fn(params)
    except SourceUnavailable as exc:
        if cached is None:
            raise DataUnavailable(f"{exc}; {problem or f'no cache at {slot.manifest_path}'}; "
                            f"{_fix_hint(info, config_name, slot)}") from None
        return _from_cache(cached, info, rules, _cache_notice(str(exc), cached))
    validate(raw, rules)  # before writing: a bad reply must not replace a good cache
    stored = cache.store(slot, raw, info.name, public_params(params))
    frame = validate(stored.frame, rules)
    log.debug("%s: fetched %d rows, cached in %s", rules.label, len(frame), stored.path)
    return FetchResult(frame=frame, digest=frame_digest(frame), source=info.name, label=rules.label,
                       from_cache=False,
                       cache_path=stored.path, manifest=stored.manifest)


def _load_quietly(slot: cache.CacheSlot) -> tuple[cache.CachedFrame | None, str | None]:
    """(cached frame, None), (None, None) when there is none, (None, why) when it is corrupt."""
    try:
        return cache.load(slot), None
    except cache.CorruptCache as exc:
        return None, str(exc)


def _cache_notice(reason: str, cached: cache.CachedFrame) -> str:
    return f"{reason}; training from the cache fetched {cached.fetched_at} ({cached.path})"


def _from_cache(cached: cache.CachedFrame, info: SourceInfo, rules: Rules,
                notice: str | None) -> FetchResult:
    if notice:
        log.warning("%s", notice)
    frame = validate(cached.frame, rules)
    return FetchResult(frame=frame, digest=frame_digest(frame), source=info.name, label=rules.label,
                       from_cache=True, cache_path=cached.path, manifest=cached.manifest,
                       notice=notice)


def _fix_hint(info: SourceInfo | None, config_name: str, slot: cache.CacheSlot) -> str:
    """What gets the data here: the source's own remedy (if any applies), a fetch elsewhere, a file."""
    return (f"to fix: {info.hint + ', ' if info and info.hint else ''}run `make fetch ARGS=\"data={config_name}\"` "
            f"where there is a network (it fills {slot.directory}/, which you can copy here), "
            "or train on your own file with data=csv")
