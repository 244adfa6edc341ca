"""The one way to reach the MLflow store: `open_store(tracking.uri, tracking.artifact_root)`.

A Store turns the configured URI into a client (tracking and registry on the same store), an
artifact location per experiment and cross-process locks. Nothing here reads MLflow's
process-global tracking URI: the few MLflow calls that only exist in fluent form (logging and
registering a model) run inside `Store.fluent()`, which points MLflow at this store and puts
back whatever was there before.

Three things a bare MlflowClient does not do:
- A new database store (sqlite above all) is created, or an old one migrated, by the first
  client that opens it; several processes doing that at once break each other's alembic
  migrations. Opening a database store is therefore serialised across the processes of this
  machine by a lock (locks.py).
- A tracking server that goes away mid-run is waited for, with backoff, for at most
  `retry_for_s` seconds (the Outage below) instead of failing the training on its first call.
- `check()` refuses, in one line and before any training, a URI MLflow cannot use.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property, wraps
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import requests
from mlflow.store.db.db_types import DATABASE_ENGINES

from pipeline.errors import TrackingError
from pipeline.secrets import scrub_text
from pipeline.tracking.locks import store_lock

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVER_SCHEMES = ("http", "https")
DEFAULT_RETRY_FOR_S = 300.0
_MAX_BACKOFF_S = 30.0
# MLflow's own HTTP retries (7, backoff factor 2) keep one call on a dead server busy for about
# four minutes, which would stall training at every metrics flush. For a server store the
# pipeline asks MLflow for a short per-call retry and waits out an outage itself (Outage), unless
# the user set these variables.
_SHORT_HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def scheme_of(uri: str) -> str:
    """`postgresql+psycopg2://...` -> `postgresql`; a bare path -> ``."""
    head, sep, _ = uri.partition("://")
    return head.split("+")[0].lower() if sep else ""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite URI (relative to the working directory unless the URI has
    four slashes), or None for an in-memory database."""
    rest = uri.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return None
    return Path(unquote(rest[1:] if rest.startswith("/") else rest))


def canonical_key(uri: str) -> str:
    """One name per store, whatever its spelling: the resolved absolute file of a sqlite store;
    otherwise the URL with scheme and host lower-cased, no credentials, query, default port or
    trailing slash. Locks and the per-process client cache are keyed by it."""
    if scheme_of(uri) == "sqlite":
        path = sqlite_path(uri)
        return uri if path is None else f"sqlite:///{path.resolve().as_posix()}"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return uri
    default_port = {"http": 80, "https": 443}.get(parts.scheme.lower())
    netloc = (parts.hostname or "").lower() + (f":{port}" if port and port != default_port else "")
    return f"{parts.scheme.lower()}://{netloc}{parts.path.rstrip('/')}"


def _mlflow_uri(uri: str) -> str:
    # A sqlite store is handed to MLflow by its absolute path, so a later chdir cannot move it.
    if scheme_of(uri) != "sqlite" or sqlite_path(uri) is None:
        return uri
    query = uri.partition("?")[2]
    return canonical_key(uri) + (f"?{query}" if query else "")


# --- a server that goes away -----------------------------------------------------------------


class ServerLost(TrackingError):
    """The tracking server has not answered for longer than tracking.retry_for_s."""


def is_unreachable(exc: BaseException) -> bool:
    """True when `exc` (or what it wraps) says the server could not be reached at all, so the
    request was not carried out and can be sent again. MLflow wraps these in MlflowException."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.RetryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class Outage:
    """Since when the server has stopped answering, shared by every call to one store.

    `call` waits an outage out (backoff 1, 2, 4 ... 30 s) for at most `retry_for_s` seconds from
    its first failed call; `attempt` tries once and says whether it worked, for work that can be
    kept for later (buffered metrics). Once the time is spent, every call fails at once with
    ServerLost until one gets through again.
    """

    def __init__(self, public_uri: str, retry_for_s: float) -> None:
        self.public_uri, self.retry_for_s = public_uri, retry_for_s
        self.down_since: float | None = None
        self.given_up = False

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        delay = 1.0
        while True:
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_unreachable(exc):
                    raise
                time.sleep(min(delay, self.failed()))
                delay = min(2 * delay, _MAX_BACKOFF_S)
            else:
                self.recovered()
                return result

    def attempt(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self.failed()
            return False
        self.recovered()
        return True

    def failed(self) -> float:
        """Record a failed call; the seconds left to wait, or ServerLost when there are none."""
        now = time.monotonic()
        if self.down_since is None:
            self.down_since = now
            log.warning("tracking server %s is not answering; retrying for up to %.0f s",
                        self.public_uri, self.retry_for_s)
        left = self.retry_for_s - (now - self.down_since)
        if self.given_up or left <= 0:
            self.given_up = True
            raise ServerLost(f"tracking server {self.public_uri} has not answered for "
                             f"{now - self.down_since:.0f} s (tracking.retry_for_s={self.retry_for_s:g})")
        return left

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning("tracking server %s answers again after %.0f s", self.public_uri,
                        time.monotonic() - self.down_since)
        self.down_since, self.given_up = None, False


class PatientClient:
    """An MlflowClient whose every method waits out a lost server (Outage.call)."""

    def __init__(self, client, outage: Outage) -> None:
        self._client, self._outage = client, outage

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name.startswith("_") or not callable(attr):
            return attr

        @wraps(attr)
        def patient(*args: Any, **kwargs: Any) -> Any:
            return self._outage.call(attr, *args, **kwargs)

        return patient


# --- the store --------------------------------------------------------------------------------


# MLflow's fluent API keeps its URIs and active run per process: one fluent block at a time.
_FLUENT = threading.RLock()
_STORES: dict[tuple[str, str | None, float], Store] = {}
_STORES_LOCK = threading.Lock()


def open_store(uri: str, artifact_root: str | None = None,
               retry_for_s: float = DEFAULT_RETRY_FOR_S) -> Store:
    """The Store for `uri` (tracking.uri), one per canonical URI and settings in a process.
    Cheap: nothing is opened until the client is first used."""
    uri = str(uri).strip()
    root = str(Path(artifact_root).resolve()) if artifact_root else None
    key = (canonical_key(uri), root, float(retry_for_s))
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = Store(uri, root, float(retry_for_s))
        return _STORES[key]


class Store:
    def __init__(self, uri: str, artifact_root: str | None, retry_for_s: float) -> None:
        self.uri = uri  # as configured: may hold credentials, never shown
        self.key = canonical_key(uri)
        self.mlflow_uri = _mlflow_uri(uri)
        self.public_uri = scrub_text(uri)
        self.scheme = scheme_of(uri)
        self.artifact_root = artifact_root
        self.outage = Outage(self.public_uri, retry_for_s)

    def __repr__(self) -> str:
        return f"Store({self.public_uri!r})"

    @property
    def is_server(self) -> bool:
        return self.scheme in SERVER_SCHEMES

    @property
    def is_sqlite(self) -> bool:
        return self.scheme == "sqlite"

    @cached_property
    def raw_client(self):
        """The plain MlflowClient (tracking and registry both on this store)."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self._check_scheme()
        if self.is_server:
            for name, value in _SHORT_HTTP_RETRIES.items():
                os.environ.setdefault(name, value)
            # One line from the Outage says the server is away; not one per urllib3 retry.
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        try:
            if self.scheme in DATABASE_ENGINES:
                with store_lock(self.key, "open", f"opening {self.public_uri}"):
                    client = MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
                    # The registry store is built lazily: build it under the lock too.
                    client.search_registered_models(max_results=1)
            else:
                client = MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
        except MlflowException as exc:
            raise TrackingError(f"cannot open the tracking store {self.public_uri}: "
                                f"{scrub_text(exc.message.splitlines()[0])}") from None
        except Exception as exc:  # SQLAlchemy/alembic errors of a corrupt or foreign database
            if isinstance(exc, TrackingError):
                raise
            raise TrackingError(f"cannot open the tracking store {self.public_uri}: "
                                f"{scrub_text(str(exc).splitlines()[0])}") from None
        return client

    @cached_property
    def client(self):
        """The client every stage uses; for a server, one that waits out an outage."""
        return PatientClient(self.raw_client, self.outage) if self.is_server else self.raw_client

    # --- checks -------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse, in one line, a store the training could not write to: an unknown scheme, a
        sqlite file in a directory that does not exist, a server that does not answer, an
        artifact root that cannot be written. Called before any training."""
        self._check_scheme()
        if self.is_sqlite:
            self._check_sqlite()
        if self.is_server:
            self._check_reachable()
        elif self.artifact_root:
            check_writable_dir(Path(self.artifact_root), "tracking.artifact_root")
        self.raw_client  # noqa: B018 - creates (or migrates) the store now, under its lock

    def _check_scheme(self) -> None:
        known = (*SERVER_SCHEMES, *DATABASE_ENGINES)
        if self.scheme not in known:
            shown = f"scheme {self.scheme!r}" if self.scheme else "no scheme"
            raise TrackingError(
                f"tracking.uri={self.public_uri!r} has {shown}; use sqlite:///<file>, "
                "http(s)://<host>:<port> or a database URL (postgresql://, mysql://, mssql://)")

    def _check_sqlite(self) -> None:
        path = sqlite_path(self.uri)
        if path is None:
            return
        folder = path.resolve().parent
        if not folder.is_dir():
            # MLflow would create it silently: a typo in the path would start a second store.
            raise TrackingError(f"tracking.uri={self.public_uri!r}: the directory {folder} does not "
                                "exist; create it or correct the path")
        if path.exists() and not path.is_file():
            raise TrackingError(f"tracking.uri={self.public_uri!r}: {path} is not a file")
        if not _can_write_in(folder):
            raise TrackingError(f"tracking.uri={self.public_uri!r}: cannot write in {folder} "
                                "(sqlite keeps its journal beside the database)")

    def _check_reachable(self, timeout_s: float = 5.0) -> None:
        """Fail in seconds, before any training, when the server does not answer."""
        try:
            requests.get(self.uri.rstrip("/") + "/health", timeout=timeout_s).raise_for_status()
        except requests.RequestException as exc:
            raise TrackingError(
                f"tracking server {self.public_uri} is unreachable ({type(exc).__name__}); start "
                "it (make server) or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
            ) from None

    # --- experiments, locks, fluent MLflow ------------------------------------------------------

    def artifact_location(self, experiment: str) -> str | None:
        """Where a new experiment keeps its artifacts: <artifact_root>/<experiment> for a local
        store; None (the server's own choice) for a server or when no root is configured."""
        if self.artifact_root is None or self.is_server:
            return None
        folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
        return (Path(self.artifact_root) / folder).as_uri()

    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (with its artifact location) if missing."""
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location(name))
        except MlflowException:
            # Another process created it between our lookup and create.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    @contextmanager
    def lock(self, name: str, what: str, timeout_s: float = 600.0) -> Iterator[Path]:
        """The cross-process lock `name` on this store (every spelling of it), e.g.
        "promote:<model>"; `what` names the guarded work in a timeout's message."""
        with store_lock(self.key, name, what, timeout_s) as path:
            yield path

    @contextmanager
    def fluent(self) -> Iterator[None]:
        """Point MLflow's fluent API at this store for the block, then restore what was there
        (the MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI of the process, or nothing)."""
        import mlflow

        self.raw_client  # noqa: B018 - a sqlite store is created under its lock, not by the fluent API
        with _FLUENT:
            saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
            mlflow.set_tracking_uri(self.mlflow_uri)
            mlflow.set_registry_uri(self.mlflow_uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # None: unset
                mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
                if saved["MLFLOW_REGISTRY_URI"] is None:
                    os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri(None) keeps it


def _can_write_in(folder: Path) -> bool:
    # A real write, not os.access: permission bits say nothing on a read-only mount, or to root.
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_writable_dir(path: Path, key: str) -> None:
    """`path` is, or can be created as, a directory this process can write in."""
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise TrackingError(f"{key}={str(path)!r}: {existing} is a file, not a directory")
    if not _can_write_in(existing):
        raise TrackingError(f"{key}={str(path)!r}: {existing} is not writable; point {key} at a "
                            "directory you can write in")
