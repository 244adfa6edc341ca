"""The run: opened (or reopened to resume) in a Store, with its params and tags, and closed by
`run_guard` with the status that says what happened."""

from __future__ import annotations

import logging
import platform
import secrets as random_ids
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from pipeline.errors import TrackingError, TrainingInterrupted
from pipeline.secrets import redact, scrub_text
from pipeline.tracking.store import ServerLost, Store

log = logging.getLogger(__name__)

# What MLflow's fluent `start_run(nested=True)` sets; the UI nests a run under this parent.
PARENT_RUN_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class RunHandle:
    store: Store
    run_id: str
    run_name: str
    experiment_id: str
    experiment_name: str

    @property
    def client(self):
        return self.store.client

    @property
    def tracking_uri(self) -> str:
        """The store's URI without credentials: fit for console lines and summaries."""
        return self.store.public_uri

    @contextmanager
    def active(self) -> Iterator[None]:
        """This run as MLflow's active run, in its store, for the calls that exist only in fluent
        form (mlflow.log_input, mlflow.pyfunc.log_model). The run stays RUNNING afterwards:
        its final status is run_guard's to set."""
        with self.store.fluent():
            mlflow.start_run(run_id=self.run_id, nested=mlflow.active_run() is not None)
            try:
                yield
            finally:
                mlflow.end_run(status="RUNNING")


def flatten(tree: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}{sep}", sep))
        else:
            flat[name] = value
    return flat


def params_from_config(config: Mapping[str, Any]) -> dict[str, str]:
    # A value longer than MLflow accepts is cut rather than failing the run.
    return {k: str(v)[:MAX_PARAM_VAL_LENGTH] for k, v in flatten(redact(config)).items()}


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


def _first_line(exc: MlflowException) -> str:
    return scrub_text(exc.message.splitlines()[0])


def open_run(store: Store, experiment: str, run_name: str, tags: Mapping[str, str],
             config: Mapping[str, Any], parent_run_id: str | None = None) -> RunHandle:
    """Create the run (status RUNNING) with params and tags; only global rank zero calls this.
    With `parent_run_id` it is a child run (MLflow's `mlflow.parentRunId` tag nests it under
    its parent in the UI), e.g. a sweep trial under its study's run."""
    tags = dict(redact(dict(tags)))
    if parent_run_id:
        tags[PARENT_RUN_TAG] = parent_run_id
    try:
        experiment_id = store.experiment(experiment)
        run = store.client.create_run(experiment_id, run_name=run_name, tags=tags)
    except MlflowException as exc:
        raise TrackingError(f"cannot open a run in {store.public_uri}: {_first_line(exc)}") from None
    handle = RunHandle(store, run.info.run_id, run_name, experiment_id, experiment)
    log_params(store.client, handle.run_id, params_from_config(config))
    return handle


def log_params(client, run_id: str, params: Mapping[str, str]) -> None:
    batch = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(batch), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=batch[start:start + MAX_PARAMS_TAGS_PER_BATCH])


def reopen_run(store: Store, run_id: str, config: Mapping[str, Any]) -> RunHandle:
    """Continue an existing run (resume): RUNNING again, its params kept.

    MLflow params are immutable, so values that differ now (say a larger max_epochs) are
    recorded in the tag `resumed_with` rather than overwritten.
    """
    client = store.client
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise TrackingError(f"trainer.resume={run_id!r}: no such run in {store.public_uri}") from None
    client.update_run(run_id, status="RUNNING")
    params = params_from_config(config)
    old = run.data.params
    log_params(client, run_id, {k: v for k, v in params.items() if k not in old})
    changed = {k: v for k, v in params.items() if k in old and old[k] != v}
    if changed:
        client.set_tag(run_id, "resumed_with", ", ".join(f"{k}={v}" for k, v in sorted(changed.items())))
    experiment = client.get_experiment(run.info.experiment_id)
    return RunHandle(store, run_id, run.info.run_name, experiment.experiment_id, experiment.name)


# --- how a run ends ------------------------------------------------------------------------------


@contextmanager
def run_guard(handle: RunHandle | None, checkpoint_dir: str | Path | None = None):
    """Never leave a run RUNNING, and say how to go on when it stops early:

    - SIGTERM (a scheduler pre-empting the job) or Ctrl-C: KILLED, then TrainingInterrupted
      "training stopped by SIGTERM; continue it with trainer.resume=<run id>";
    - the tracking server lost for longer than tracking.retry_for_s: a TrackingError naming the
      local checkpoint (in `checkpoint_dir`) to resume from once the server is back;
    - any other error: FAILED, the error goes on;
    - otherwise FINISHED.

    Inside Lightning's fit, SIGTERM stops training at the next step (Lightning's own handler); the
    guard makes SIGTERM stop the other stages too (test, publish). Buffered metrics are flushed
    and last.ckpt mirrored by the logger and MlflowCheckpointMirror, which Lightning calls on
    every way out of fit. On ranks other than zero (handle None) only the messages apply.
    """
    with sigterm_raises():
        try:
            yield handle
        except ServerLost as exc:
            _end(handle, "KILLED")
            raise TrackingError(_server_lost_message(exc, handle, checkpoint_dir)) from None
        except BaseException as exc:
            signal_name = _stop_signal(exc)
            if signal_name is None:
                _end(handle, "FAILED")
                if handle is not None:
                    log.error("run %s FAILED; once the cause is fixed, continue it with "
                              "trainer.resume=%s", handle.run_id, _resume_target(handle, checkpoint_dir))
                raise
            _end(handle, "KILLED")
            target = handle.run_id if handle else "<run id>"
            raise TrainingInterrupted(f"training stopped by {signal_name}; continue it with "
                                      f"trainer.resume={target}") from None
    if handle is not None:
        handle.client.set_terminated(handle.run_id, "FINISHED")


@contextmanager
def ends_on_stop(handle: RunHandle) -> Iterator[None]:
    """For set-up between opening a run and run_guard: an error or a stop ends the run (FAILED,
    or KILLED for SIGTERM and Ctrl-C) before it goes on."""
    try:
        yield
    except BaseException as exc:
        _end(handle, "FAILED" if _stop_signal(exc) is None else "KILLED")
        raise


def _stop_signal(exc: BaseException) -> str | None:
    if isinstance(exc, SIGTERMException):
        return "SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "SIGINT"
    # Lightning answers Ctrl-C inside fit with sys.exit(1), raised while handling the interrupt.
    if isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt):
        return "SIGINT"
    return None


def _end(handle: RunHandle | None, status: str) -> None:
    """Mark a run that stopped early; one try only (the process is on its way out, and the server
    may be the reason), so a failure here is logged, never raised over the real reason."""
    if handle is None:
        return
    store = handle.store
    try:
        if not store.outage.attempt(store.raw_client.set_terminated, handle.run_id, status):
            log.warning("run %s could not be marked %s: %s does not answer", handle.run_id, status,
                        store.public_uri)
    except Exception as exc:  # noqa: BLE001 - the original error is the one to report
        log.warning("run %s could not be marked %s: %s", handle.run_id, status,
                    scrub_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__))


def _resume_target(handle: RunHandle, checkpoint_dir) -> str:
    """The local last.ckpt when there is one (it may be newer than the run's copy), else the run."""
    last = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
    return str(last) if last is not None and last.is_file() else handle.run_id


def _server_lost_message(exc: ServerLost, handle: RunHandle | None, checkpoint_dir) -> str:
    last = Path(checkpoint_dir) / "last.ckpt" if checkpoint_dir else None
    if last is not None and last.is_file():
        return (f"{exc}: training stopped; its last checkpoint is kept at {last}; once the server "
                f"is back, continue it with trainer.resume={last}")
    target = handle.run_id if handle else "<run id>"
    return f"{exc}: training stopped before its first checkpoint; start it again, or once the " \
           f"server is back continue it with trainer.resume={target}"


# A SIGTERM the handler received. Its raise can be lost: a signal that lands while Python runs a
# weakref callback or a __del__ raises there, Python prints "Exception ignored in ..." and goes
# on (seen: a sweep trial that trained to the end after SIGTERM). raise_if_stopped() raises it
# again at the next stage boundary.
_RECEIVED = threading.Event()
_OPEN = [0]  # nested sigterm_raises blocks: the outermost one clears _RECEIVED


def raise_if_stopped() -> None:
    """Raise the SIGTERM received while a sigterm_raises block is open, if its raise was lost."""
    if _RECEIVED.is_set():
        raise SIGTERMException()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While open, SIGTERM raises SIGTERMException wherever the process is (the run guard; a
    sweep worker between trials). Inside fit Lightning's own handler runs first and calls this
    one; there it only records the signal, and Lightning stops cleanly at the next step."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        _RECEIVED.set()
        if signal.getsignal(signal.SIGTERM) is handler:
            raise SIGTERMException()

    if _OPEN[0] == 0:
        _RECEIVED.clear()
    _OPEN[0] += 1
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _OPEN[0] -= 1
        if _OPEN[0] == 0:
            _RECEIVED.clear()  # delivered, or the process ends: the next block starts afresh
