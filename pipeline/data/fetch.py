"""The fetch stage: a data config -> a validated pandas frame plus its content digest."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.data.sources import get_source
from pipeline.errors import DataError


@dataclass(frozen=True)
class FetchResult:
    frame: pd.DataFrame
    digest: str
    source: str


def frame_digest(frame: pd.DataFrame) -> str:
    """Content identity of a frame: index, column names and values (not its memory layout)."""
    h = hashlib.sha256()
    h.update(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    return h.hexdigest()[:16]


def require_columns(frame: pd.DataFrame, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}; "
                        f"available: {', '.join(map(str, frame.columns))}")


def fetch(data_cfg: Mapping[str, Any]) -> FetchResult:
    name = data_cfg["source"]
    frame = get_source(name)(dict(data_cfg.get("params") or {}))
    if frame.empty:
        raise DataError(f"{name}: the source returned no rows")
    require_columns(frame, list(data_cfg["inputs"]) + list(data_cfg["targets"]), name)
    return FetchResult(frame=frame, digest=frame_digest(frame), source=name)
