"""Cross-process locks on a tracking store, in a directory that belongs to this user alone.

A lock file in a shared place (the temp dir, a shared working directory) could be planted as a
symbolic link to a file of the victim's, which opening the lock would then create or truncate.
So the locks live in a per-user directory created 0700 and checked to be ours, and a lock file
that is a link is refused (and never opened through: filelock opens with O_NOFOLLOW). The file
name is a digest of the canonical store, so two spellings of one store share one lock.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.errors import TrackingError

APP = "lstm-pipeline"


def _state_home() -> Path:
    # XDG: state that outlives a process but is not worth a backup (locks, kept checkpoints).
    configured = os.environ.get("XDG_STATE_HOME")
    return Path(configured) if configured else Path.home() / ".local" / "state"


def user_dir(*parts: str) -> Path:
    """`<state home>/lstm-pipeline/<parts>`: this user's private directory, created on first use.

    Falls back to `<temp dir>/lstm-pipeline-<uid>` where the home directory cannot be written.
    """
    try:
        base = _private_dir(_state_home() / APP)
    except OSError:
        uid = getattr(os, "getuid", lambda: "user")()
        base = _private_dir(Path(tempfile.gettempdir()) / f"{APP}-{uid}")
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _private_dir(path: Path) -> Path:
    """Create `path` 0700, or accept it only if it is a real directory of ours that no one else
    may enter (a name in a shared parent can have been taken first by someone else)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise TrackingError(f"{path} is not a plain directory; remove it so the pipeline can "
                            "create its private lock directory there")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise TrackingError(f"{path} belongs to another user (uid {info.st_uid}); remove it or set "
                            "XDG_STATE_HOME to a directory of yours")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def lock_path(store_key: str, name: str) -> Path:
    """The lock file of `name` (e.g. "open", "promote:sine-forecaster") on one store; the name
    starts the file name so a person can tell the files apart."""
    digest = hashlib.sha256(f"{store_key}\n{name}".encode()).hexdigest()[:24]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40]
    return user_dir("locks") / f"{readable}-{digest}.lock"


@contextmanager
def store_lock(store_key: str, name: str, what: str, timeout_s: float = 600.0) -> Iterator[Path]:
    """Hold the lock `name` of the store `store_key` (a canonical key: see store.canonical_key).

    `what` names the guarded work in the error when the lock cannot be had within `timeout_s`.
    """
    path = lock_path(store_key, name)
    refuse_link(path)
    lock = FileLock(path, timeout=timeout_s)
    try:
        lock.acquire()
    except Timeout:
        raise TrackingError(f"{what}: {path} is held by another process (waited {timeout_s:g} s); "
                            "wait for it to finish, or stop it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a link planted between our check and the open
            refuse_link(path, planted=True)
        raise TrackingError(f"{what}: cannot open the lock file {path} ({exc.strerror})") from None
    try:
        yield path
    finally:
        lock.release()


def refuse_link(path: Path, planted: bool = False) -> None:
    if planted or path.is_symlink():
        raise TrackingError(f"lock file {path} is a symbolic link; refusing to follow it. Remove "
                            "the link (nothing was written through it)")
