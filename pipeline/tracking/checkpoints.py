"""Checkpoints that survive the process: stamped with their MLflow run, mirrored into it each
epoch, and found again by `trainer.resume=<checkpoint path | run id>`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import lightning as L
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError

LAST_ARTIFACT = "checkpoints/last.ckpt"
RUN_ID_KEY = "mlflow_run_id"


class MlflowCheckpointMirror(L.Callback):
    """Rank zero stamps each checkpoint with the run id and mirrors `last.ckpt` into the run, so a
    run killed mid-training (pre-emption, Ctrl-C) can be resumed from its MLflow run alone.

    ModelCheckpoint writes last.ckpt at the end of each training epoch and runs after every other
    callback there, so the copy is uploaded at the next epoch's start, at the end of training, and
    when training is interrupted.
    """

    def __init__(self, client: MlflowClient | None, run_id: str | None, checkpoint_dir: str) -> None:
        self.client, self.run_id = client, run_id
        self.last = Path(checkpoint_dir) / "last.ckpt"
        self._uploaded_mtime: float | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.run_id:
            checkpoint[RUN_ID_KEY] = self.run_id

    def _upload(self, trainer) -> None:
        if not (trainer.is_global_zero and self.client and self.last.exists()):
            return
        mtime = self.last.stat().st_mtime
        if mtime != self._uploaded_mtime:
            self.client.log_artifact(self.run_id, str(self.last), "checkpoints")
            self._uploaded_mtime = mtime

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._upload(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._upload(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._upload(trainer)


def run_id_in_checkpoint(path: Path) -> str | None:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get(RUN_ID_KEY)


def resolve_resume(target: str, client_factory) -> tuple[str, str | None]:
    """`target` is a checkpoint file or an MLflow run id -> (local checkpoint path, run id)."""
    path = Path(str(target)).expanduser()
    if path.suffix == ".ckpt" or path.exists():
        if not path.is_file():
            raise ConfigError(f"trainer.resume={target!r}: no such checkpoint file")
        return str(path), run_id_in_checkpoint(path)
    return download_last_checkpoint(client_factory(), str(target)), str(target)


def _resume_dir(run_id: str) -> Path:
    # A fixed place per run, so DDP workers on this node find what rank zero downloaded.
    return Path(tempfile.gettempdir()) / "lstm-pipeline-resume" / run_id


def local_resume_path(target: str) -> str:
    """Where rank zero put the checkpoint for `target` (a checkpoint path or a run id)."""
    path = Path(target).expanduser()
    if path.suffix == ".ckpt" or path.exists():
        return str(path)
    return str(_resume_dir(target) / LAST_ARTIFACT)


def download_last_checkpoint(client: MlflowClient, run_id: str) -> str:
    target = _resume_dir(run_id)
    target.mkdir(parents=True, exist_ok=True)
    try:
        return client.download_artifacts(run_id, LAST_ARTIFACT, str(target))
    except MlflowException as exc:
        raise ConfigError(f"trainer.resume={run_id!r}: no {LAST_ARTIFACT} in that run "
                          f"({exc.message.splitlines()[0]})") from None
    except OSError:
        raise ConfigError(f"trainer.resume={run_id!r}: the run has no {LAST_ARTIFACT} to resume from") from None
