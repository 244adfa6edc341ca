"""Where a study lives, so that several workers can share it.

- default (`storage: null`): a journal file beside the MLflow sqlite store (`optuna-journal.log`
  next to mlflow.db), Optuna's JournalStorage: processes on one machine append to it under a
  file lock. Optuna advises against SQLite for parallel optimisation (no row locks, "database
  is locked"), so the journal, not mlflow.db, holds the study.
- `journal:<path>` or a path: a journal file of your choice (a shared NFS path works for a few
  machines: Optuna's default symlink lock holds on NFS).
- an SQLAlchemy URL (`postgresql+psycopg2://user:pw@host/db`, `mysql+pymysql://...`): one
  database for workers on several machines; trials carry a heartbeat, so a worker that dies
  mid-trial has that trial marked failed by the next worker instead of holding the budget.

Every name of a storage that reaches a log, a tag or an error is scrubbed of credentials.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.secrets import scrub_text
from pipeline.tracking.store import scheme_of, sqlite_path

JOURNAL_FILE = "optuna-journal.log"
JOURNAL_PREFIX = "journal:"
DATABASE_SCHEMES = ("postgresql", "mysql", "sqlite", "oracle", "mssql")
# A dead worker's RUNNING trial is failed after this long without a heartbeat (database storages).
HEARTBEAT_S = 30
GRACE_S = 90


def default_storage(tracking_uri: str) -> str:
    """A journal file beside the MLflow sqlite store, else in the working directory."""
    if scheme_of(tracking_uri) == "sqlite":
        db = sqlite_path(tracking_uri)
        if db is not None:
            return f"{JOURNAL_PREFIX}{(db.parent / JOURNAL_FILE).resolve()}"
    return f"{JOURNAL_PREFIX}{Path(JOURNAL_FILE).resolve()}"


def journal_path(storage: str) -> Path | None:
    """The journal file a storage string names, or None for a database URL."""
    if storage.startswith(JOURNAL_PREFIX):
        return Path(storage[len(JOURNAL_PREFIX):].removeprefix("//"))
    if "://" not in storage:
        return Path(storage)
    return None


def public_name(storage: str) -> str:
    return scrub_text(storage)


def open_storage(storage: str):
    """The Optuna storage for `storage`, opened and reachable; a storage that cannot be used is
    one ConfigError naming it (credentials scrubbed), before any study is created."""

    path = journal_path(storage)
    if path is not None:
        return _journal(path)
    scheme = scheme_of(storage)
    if scheme not in DATABASE_SCHEMES:
        raise ConfigError(f"hparams_search.storage={public_name(storage)!r}: not a journal file or "
                          "an SQLAlchemy database URL; e.g. journal:/shared/study.log or "
                          "postgresql+psycopg2://user:password@host:5432/optuna")
    try:
        return _database(storage)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(f"hparams_search.storage={public_name(storage)!r}: cannot open the study "
                          f"database: {scrub_text(reason)}") from None


def _database(storage: str, attempts: int = 4):
    """RDBStorage for a database URL. Workers that start together on a new database all create
    Optuna's tables; the losers of that race get "relation already exists" or a duplicate key
    (optuna/optuna#1092) and, on their next try, find the tables made."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(storage, heartbeat_interval=HEARTBEAT_S,
                                                  grace_period=GRACE_S,
                                                  engine_kwargs={"pool_pre_ping": True})
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def _journal(path: Path):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not path.parent.is_dir():
        raise ConfigError(f"hparams_search.storage={str(path)!r}: the folder {path.parent} does not "
                          "exist; create it or point the storage at an existing folder")
    if path.exists() and not path.is_file():
        raise ConfigError(f"hparams_search.storage={str(path)!r}: exists and is not a file")
    return JournalStorage(JournalFileBackend(str(path)))
