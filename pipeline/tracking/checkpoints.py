"""Checkpoints that survive the process: stamped with their MLflow run, mirrored into it each
epoch, kept on disk when a training stops early, and found again by
`trainer.resume=<checkpoint path | run id>`."""

from __future__ import annotations

import logging
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from mlflow.exceptions import MlflowException

from pipeline.errors import ConfigError
from pipeline.tracking.locks import user_dir
from pipeline.tracking.store import Store

log = logging.getLogger(__name__)

LAST_ARTIFACT = "checkpoints/last.ckpt"
RUN_ID_KEY = "mlflow_run_id"


class MlflowCheckpointMirror(L.Callback):
    """Rank zero stamps each checkpoint with the run id and mirrors `last.ckpt` into the run, so a
    run killed mid-training (pre-emption, Ctrl-C) can be resumed from its MLflow run alone.

    ModelCheckpoint writes last.ckpt at the end of each training epoch and runs after every other
    callback there, so the copy is uploaded at the next epoch's start, at the end of training, and
    when training is interrupted. While the tracking server is away the copy waits: the file stays
    in the local checkpoint directory and goes up at the next epoch the server answers.
    """

    def __init__(self, handle, checkpoint_dir: str) -> None:
        """`handle`: the run.RunHandle of rank zero; None on other ranks."""
        self.handle = handle
        self.last = Path(checkpoint_dir) / "last.ckpt"
        self._uploaded_mtime: float | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.handle is not None:
            checkpoint[RUN_ID_KEY] = self.handle.run_id

    def _upload(self, trainer) -> None:
        if not (trainer.is_global_zero and self.handle is not None and self.last.exists()):
            return
        mtime = self.last.stat().st_mtime
        if mtime == self._uploaded_mtime:
            return
        store: Store = self.handle.store
        if store.outage.attempt(store.raw_client.log_artifact, self.handle.run_id, str(self.last),
                                "checkpoints"):
            self._uploaded_mtime = mtime
        else:
            log.warning("checkpoint kept locally at %s until %s answers", self.last, store.public_uri)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._upload(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._upload(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # On the way out: one try, and never an error of its own over the one that stopped us.
        try:
            self._upload(trainer)
        except Exception as exc:  # noqa: BLE001
            log.warning("last checkpoint not mirrored (%s); it is kept at %s", type(exc).__name__,
                        self.last)


@contextmanager
def checkpoint_directory(configured: str | None, run_id: str | None) -> Iterator[str]:
    """Where Lightning writes checkpoints during one training.

    - `configured` (trainer.checkpoint_dir, e.g. a shared path for multi-node runs): used, kept.
    - a tracked run on rank zero: `<user state dir>/checkpoints/<run id>`, kept when training
      stops early (so the stop message can name the file to resume from, even with the tracking
      server gone) and removed once the run has finished and its checkpoints are in MLflow. A
      resumed run uses the same directory.
    - otherwise (other ranks, untracked): a temporary directory.
    """
    if configured:
        Path(configured).mkdir(parents=True, exist_ok=True)
        yield str(configured)
        return
    if run_id is None:
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            yield tmp
        return
    folder = kept_checkpoint_dir(run_id)
    folder.mkdir(exist_ok=True)
    yield str(folder)  # an exception here leaves the folder in place, on purpose
    shutil.rmtree(folder, ignore_errors=True)


def kept_checkpoint_dir(run_id: str) -> Path:
    """Where checkpoint_directory keeps the checkpoints of `run_id` on this machine."""
    return user_dir("checkpoints") / run_id


def run_id_in_checkpoint(path: Path, target: str) -> str | None:
    """The MLflow run a checkpoint belongs to; ConfigError (naming the file) if it is not one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile,
            OSError) as exc:
        raise ConfigError(f"trainer.resume={target!r}: {path} is not a Lightning checkpoint "
                          f"({type(exc).__name__}); pass a .ckpt written by a training, or a run id") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"trainer.resume={target!r}: {path} holds no model state; pass a .ckpt "
                          "written by a training, or a run id")
    return checkpoint.get(RUN_ID_KEY)


def _is_path(target: str) -> bool:
    path = Path(target).expanduser()
    return path.suffix == ".ckpt" or path.exists() or "/" in target or "\\" in target


def resolve_resume(target: str, store: Store) -> tuple[str, str | None]:
    """`target` is a checkpoint file or an MLflow run id -> (local checkpoint path, run id)."""
    target = str(target)
    if _is_path(target):
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(f"trainer.resume={target!r}: no such checkpoint file")
        return str(path), run_id_in_checkpoint(path, target)
    local = download_last_checkpoint(store, target)
    run_id_in_checkpoint(Path(local), target)  # a corrupt upload fails here, in one line
    return local, target


def _resume_dir(run_id: str) -> Path:
    # A fixed place per run and user, so DDP workers on this node find what rank zero downloaded.
    return user_dir("resume", run_id)


def local_resume_path(target: str) -> str:
    """Where rank zero put the checkpoint for `target` (a checkpoint path or a run id)."""
    if _is_path(str(target)):
        return str(Path(target).expanduser())
    return str(_resume_dir(str(target)) / LAST_ARTIFACT)


def download_last_checkpoint(store: Store, run_id: str) -> str:
    target = _resume_dir(run_id)
    try:
        return store.client.download_artifacts(run_id, LAST_ARTIFACT, str(target))
    except MlflowException as exc:
        raise ConfigError(f"trainer.resume={run_id!r}: no {LAST_ARTIFACT} in that run of "
                          f"{store.public_uri} ({exc.message.splitlines()[0]})") from None
    except OSError:
        raise ConfigError(f"trainer.resume={run_id!r}: the run has no {LAST_ARTIFACT} to resume "
                          "from") from None
