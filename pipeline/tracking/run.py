"""Run setup: tracking URI, reachability, experiment, the run itself and its params and tags."""

from __future__ import annotations

import platform
import re
import secrets as random_ids
import subprocess
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import requests
from mlflow.tracking import MlflowClient

from pipeline.errors import TrackingError
from pipeline.tracking.secrets import redact

# MLflow caps a param value at 6000 characters; longer values are cut rather than failing the run.
_PARAM_LIMIT = 6000


@dataclass(frozen=True)
class RunHandle:
    client: MlflowClient
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str
    tracking_uri: str


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds, before any training, when a tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingError(
            f"tracking server {uri} is unreachable ({type(exc).__name__}); start it (make server) "
            "or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
        ) from None


def _artifact_location(artifact_root: str | None, uri: str, experiment: str) -> str | None:
    # A server decides artifact locations itself; a local store keeps them in ./mlartifacts/<experiment>.
    if artifact_root is None or uri.startswith(("http://", "https://", "databricks")):
        return None
    folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", experiment)
    return (Path(artifact_root).resolve() / folder).as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(artifact_root, uri, name))
    except mlflow.exceptions.MlflowException:
        # Another process created it between our lookup and create.
        return client.get_experiment_by_name(name).experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def params_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v)[:_PARAM_LIMIT] for k, v in flatten(redact(config)).items()}


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def environment_tags() -> dict[str, str]:
    import lightning
    import torch

    return {"git_commit": git_commit(), "host": platform.node(), "torch_version": torch.__version__,
            "lightning_version": lightning.__version__, "mlflow_version": mlflow.__version__}


def run_name_for(variant: str, data_name: str) -> str:
    return f"{variant}-{data_name}-{random_ids.token_hex(3)}"


def open_run(uri: str, experiment: str, artifact_root: str | None, run_name: str,
             tags: Mapping[str, str], config: Mapping[str, Any]) -> RunHandle:
    """Create the run (status RUNNING) with params and tags; only global rank zero calls this."""
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment_id = ensure_experiment(client, experiment, artifact_root, uri)
        run = client.create_run(experiment_id, run_name=run_name, tags=dict(redact(dict(tags))))
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot open a run in {uri}: {exc.message.splitlines()[0]}") from None
    handle = RunHandle(client, run.info.run_id, run_name, experiment_id, experiment, uri)
    log_params(client, handle.run_id, params_from_config(config))
    return handle


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    batch = [mlflow.entities.Param(k, v) for k, v in params.items()]
    for start in range(0, len(batch), 100):  # log_batch takes at most 100 params per call
        client.log_batch(run_id, params=batch[start:start + 100])


def reopen_run(uri: str, run_id: str, config: Mapping[str, Any]) -> RunHandle:
    """Continue an existing run (resume): RUNNING again, its params kept.

    MLflow params are immutable, so values that differ now (say a larger max_epochs) are
    recorded in the tag `resumed_with` rather than overwritten.
    """
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise TrackingError(f"trainer.resume={run_id!r}: no such run in {uri}") from None
    client.update_run(run_id, status="RUNNING")
    params = params_from_config(config)
    old = run.data.params
    log_params(client, run_id, {k: v for k, v in params.items() if k not in old})
    changed = {k: v for k, v in params.items() if k in old and old[k] != v}
    if changed:
        client.set_tag(run_id, "resumed_with", ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
    experiment = client.get_experiment(run.info.experiment_id)
    return RunHandle(client, run_id, run.info.run_name, experiment.experiment_id, experiment.name, uri)


@contextmanager
def run_guard(handle: RunHandle | None):
    """Never leave a run RUNNING: KILLED when stopped (Ctrl-C, SIGTERM: resumable), FAILED on
    an error, FINISHED otherwise. A no-op on ranks other than zero (handle is None)."""
    if handle is None:
        yield None
        return
    try:
        yield handle
    except (KeyboardInterrupt, SystemExit):
        handle.client.set_terminated(handle.run_id, "KILLED")
        raise
    except BaseException:
        handle.client.set_terminated(handle.run_id, "FAILED")
        raise
    handle.client.set_terminated(handle.run_id, "FINISHED")
