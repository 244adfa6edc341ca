"""`make serve`: MLflow's own scoring server over a registered model (the champion by default).

    python -m pipeline.serving [data=...] [serve.model=models:/<name>@champion] [serve.port=5001]

The model reference is resolved in the configured store first (one line if the model or the
alias is missing), then `mlflow models serve --env-manager local` runs on the version it names,
so the version announced is the version served. Two things MLflow leaves to the caller:

- it starts its server as `exec uvicorn ...` from a shell, so uvicorn must be on PATH: the
  interpreter's own bin folder (the venv's) goes first on PATH, and `make serve` works from a
  fresh clone without an activated venv;
- it resolves models:/ URIs against MLFLOW_TRACKING_URI: the configured store is passed
  explicitly (by default sqlite:///mlflow.db in the working directory).

The server binds 127.0.0.1 unless serve.host says otherwise: it has no authentication, and
loading a model runs the model's code with the server's rights (MLflow models in general, and
checkpoints, are pickles): serve models from your own registry only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cli import run_command
from pipeline.config import ServeConfig, TrackingConfig, TrainConfig, tracking_store
from pipeline.errors import TrackingError

CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class ModelRef:
    """A registered model version: what a models:/ URI named when it was resolved."""

    name: str
    version: str
    asked: str  # the URI as given (models:/name@champion)

    @property
    def uri(self) -> str:
        """Pinned to the version: a later promotion cannot change what this reference loads."""
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        return f"{self.name} v{self.version}" + ("" if self.asked == self.uri else f" ({self.asked})")


def model_uri(asked: str | None, tracking: TrackingConfig) -> str:
    """The URI asked for, or the configured registered model's champion."""
    return asked or f"models:/{tracking.registered_model}@{CHAMPION_ALIAS}"


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """models:/name@alias -> (name, None, alias); models:/name/3 -> (name, "3", None)."""
    rest = uri.removeprefix("models:/")
    if "@" in rest.split("/", 1)[0]:
        name, _, alias = rest.partition("@")
        return name, None, alias
    name, _, version = rest.partition("/")
    return name, version, None


def resolve_model(store, uri: str) -> ModelRef:
    """The version `uri` names in `store` (a pipeline.tracking.store.Store), or one line saying
    what is missing and how to get it."""
    from mlflow.exceptions import MlflowException

    from pipeline.tracking.store import sqlite_path

    database = sqlite_path(store.uri) if store.is_sqlite else None
    if database is not None and not database.is_file():
        # Opening it would create an empty store: a typo or the wrong folder would look like
        # "no such model".
        raise TrackingError(f"{uri}: there is no store at {store.public_uri} ({database.resolve()}); "
                            "train a model first (make train), run from the folder that holds "
                            "mlflow.db, or set MLFLOW_TRACKING_URI / tracking.uri")
    name, version, alias = parse_model_uri(uri)
    client = store.client
    try:
        found = (client.get_model_version_by_alias(name, alias) if alias
                 else client.get_model_version(name, version))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in exc.message.lower():
            raise
        known = [m.name for m in client.search_registered_models(max_results=20)]
        what = f"alias @{alias}" if alias else f"version {version}"
        raise TrackingError(
            f"{uri}: the store {store.public_uri} has no {what} of registered model {name!r} "
            f"(registered models: {', '.join(known) or 'none'}); train one (make train), promote "
            "one (make promote), or name another with model=models:/<name>@champion") from None
    return ModelRef(name=name, version=str(found.version), asked=uri)


# --- the server -------------------------------------------------------------------------------------


def server_command(ref: ModelRef, serve: ServeConfig) -> list[str]:
    """MLflow's scoring server on the resolved version, in this interpreter's environment."""
    return [sys.executable, "-m", "mlflow", "models", "serve", "--model-uri", ref.uri,
            "--env-manager", "local", "--host", serve.host, "--port", str(serve.port),
            "--workers", str(serve.workers)]


def server_env(store, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment MLflow's server needs: uvicorn on PATH (it is exec'd by name from a
    shell), the store as the tracking and registry URI, no MLflow progress bars."""
    env = dict(os.environ if base is None else base)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep)
                                              if p and p != bin_dir]])
    env["MLFLOW_TRACKING_URI"] = store.mlflow_uri
    env["MLFLOW_REGISTRY_URI"] = store.mlflow_uri
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # One window per request is far too small to split across threads, and torch's intra-op
    # threads spin-wait for each other: on a busy CPU a request then waits for a descheduled
    # thread (hundreds of ms measured on 2 loaded cores). Throughput comes from serve.workers.
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def invocations_url(serve: ServeConfig) -> str:
    host = f"[{serve.host}]" if ":" in serve.host else serve.host
    return f"http://{host}:{serve.port}/invocations"


def serve(cfg: TrainConfig) -> None:
    """Resolve the model, say what is served where, and become MLflow's server (exec: its
    signals and exit status are the command's)."""
    store = tracking_store(cfg.tracking)
    ref = resolve_model(store, model_uri(cfg.serve.model, cfg.tracking))
    print(f"serving {ref.describe()} from {store.public_uri} at {invocations_url(cfg.serve)}",
          flush=True)
    command = server_command(ref, cfg.serve)
    os.execve(command[0], command, server_env(store))


def main(argv: Sequence[str] | None = None) -> None:
    run_command("serve", serve, argv)


if __name__ == "__main__":
    main()
