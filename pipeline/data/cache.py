"""On-disk cache of fetched frames: Parquet data plus a small JSON manifest.

Layout, under data.cache_dir (default ./data_cache), one slot per source and parameters:

    <source>-<key>.json                  the manifest: source, params, fetch time, rows, digest
    <source>-<key>.<digest>.parquet      the frame exactly as the source returned it

The manifest is the commit point. A store writes the data file under a new, content-named
file (temporary file in the same directory, fsync, os.replace), then replaces the manifest
the same way, and only then deletes the previous data file. An interruption at any moment
leaves either the old manifest with its old, intact data file, or the new pair: never a
manifest pointing at a partial file, and no temporary file survives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.data.digest import frame_digest
from pipeline.errors import DataError

MANIFEST_FORMAT = 1


class CorruptCache(DataError):
    """A cache slot exists but cannot be trusted (unreadable, missing file, digest mismatch)."""


@dataclass(frozen=True)
class CacheSlot:
    directory: Path
    key: str

    @property
    def manifest_path(self) -> Path:
        return self.directory / f"{self.key}.json"

    def data_path(self, digest: str) -> Path:
        return self.directory / f"{self.key}.{digest}.parquet"


@dataclass(frozen=True)
class CachedFrame:
    frame: pd.DataFrame
    manifest: dict[str, Any]
    path: Path

    @property
    def fetched_at(self) -> str:
        return str(self.manifest.get("fetched_at", "at an unknown time"))


def cache_slot(cache_dir: str | os.PathLike, source: str, params: Mapping[str, Any]) -> CacheSlot:
    """The same source and parameters always map to the same slot (credentials are never params)."""
    identity = json.dumps({"source": source, "params": params}, sort_keys=True, default=str)
    return CacheSlot(Path(cache_dir), f"{source}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}")


def load(slot: CacheSlot) -> CachedFrame | None:
    """The cached frame, None when there is none; CorruptCache when it cannot be trusted."""
    if not slot.manifest_path.is_file():
        return None
    manifest = _read_manifest(slot.manifest_path)
    path = slot.directory / manifest["data_file"]
    if not path.is_file():
        raise CorruptCache(f"cache file {path} named by {slot.manifest_path} is missing")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for one cause: a damaged file
        raise CorruptCache(f"cache file {path} is not readable Parquet ({type(exc).__name__})") from None
    if (actual := frame_digest(frame)) != manifest["digest"]:
        raise CorruptCache(f"cache file {path} does not match its manifest (digest {actual}, "
                           f"manifest says {manifest['digest']})")
    return CachedFrame(frame=frame, manifest=manifest, path=path)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        for key in ("data_file", "digest", "fetched_at"):
            if not isinstance(manifest.get(key), str):
                raise ValueError(f"no {key}")
        datetime.fromisoformat(manifest["fetched_at"])
    except (OSError, ValueError) as exc:
        raise CorruptCache(f"cache manifest {path} is unreadable ({exc})") from None
    if Path(manifest["data_file"]).name != manifest["data_file"]:
        raise CorruptCache(f"cache manifest {path} names a file outside its directory")
    return manifest


def store(slot: CacheSlot, frame: pd.DataFrame, source: str, params: Mapping[str, Any],
          now: datetime | None = None) -> CachedFrame:
    """Write `frame` to the slot atomically; returns what a later load() will read."""
    slot.directory.mkdir(parents=True, exist_ok=True)
    with _temporary_file(slot.directory, slot.key) as tmp:
        write_parquet(frame, tmp)
        # Digest what a reader will see, so a load compares like with like.
        stored = pd.read_parquet(tmp)
        digest = frame_digest(stored)
        path = slot.data_path(digest)
        share(tmp)
        os.replace(tmp, path)
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": source,
        "params": dict(params),
        "fetched_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "rows": len(stored),
        "columns": [str(c) for c in stored.columns],
        "digest": digest,
        "data_file": path.name,
    }
    try:
        with _temporary_file(slot.directory, slot.key) as tmp:
            write_text(json.dumps(manifest, indent=2, default=str) + "\n", tmp)
            share(tmp)
            os.replace(tmp, slot.manifest_path)
    except BaseException:
        # The old manifest still rules; drop the new data file unless it is the one it names.
        if path.name != _committed_data_file(slot):
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    _fsync_directory(slot.directory)
    _remove_stale_data_files(slot, keep=path)
    return CachedFrame(frame=stored, manifest=manifest, path=path)


def _committed_data_file(slot: CacheSlot) -> str | None:
    try:
        return _read_manifest(slot.manifest_path)["data_file"]
    except CorruptCache:
        return None


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with open(path, "wb") as fh:
        frame.to_parquet(fh, index=True)
        fh.flush()
        os.fsync(fh.fileno())


def write_text(text: str, path: Path) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


# The process's umask, read once at import (reading it means setting it, which is not thread-safe).
_UMASK = os.umask(0)
os.umask(_UMASK)


def share(path: Path) -> None:
    """The mode an ordinary write would give (mkstemp's files are 0600): the workers of a DAG
    share the cache, under one group or umask the deployment chooses."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextlib.contextmanager
def _temporary_file(directory: Path, key: str) -> Iterator[Path]:
    """A temporary path beside the target (os.replace is atomic within one file system only)."""
    fd, name = tempfile.mkstemp(dir=directory, prefix=f".{key}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _fsync_directory(directory: Path) -> None:
    # Makes the renames durable; not every platform can open a directory, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_data_files(slot: CacheSlot, keep: Path) -> None:
    for path in slot.directory.glob(f"{slot.key}.*.parquet"):
        if path != keep:
            with contextlib.suppress(OSError):
                path.unlink()


def is_fresh(cached: CachedFrame, params: Mapping[str, Any], today: date | None = None) -> bool:
    """Does a network source's cache still hold what a fetch now would return?

    Yes if it was fetched today, or if params.end closes the range before the fetch day. A range
    running "up to today" (no end) grows every trading day, so older caches are refetched.
    """
    today = today or datetime.now(timezone.utc).date()
    fetched = datetime.fromisoformat(cached.fetched_at).date()
    if fetched >= today:
        return True
    end = params.get("end")
    return bool(end) and pd.Timestamp(str(end)).date() < fetched
