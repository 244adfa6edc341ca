"""Stops lose nothing: on an error, Ctrl-C or SIGTERM during a real Lightning fit, the buffered
metrics are in the store, last.ckpt is mirrored into the run, and the run is FAILED or KILLED
with the hint to resume it."""

from __future__ import annotations

import os
import signal
import tempfile

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from pipeline.errors import TrainingInterrupted
from pipeline.tracking.checkpoints import (
    LAST_ARTIFACT,
    RUN_ID_KEY,
    MlflowCheckpointMirror,
    checkpoint_directory,
    kept_checkpoint_dir,
)
from pipeline.tracking.logger import BufferedMLFlowLogger
from pipeline.tracking.run import open_run, run_guard
from pipeline.tracking.store import open_store

STOP_EPOCH = 2


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class Tiny(L.LightningModule):
    """Stops itself `how` at the second step of epoch STOP_EPOCH."""

    def __init__(self, how: str | None) -> None:
        super().__init__()
        self.layer, self.how = nn.Linear(2, 1), how

    def training_step(self, batch, index):
        if self.current_epoch == STOP_EPOCH and index == 1:
            self.stop()
        x, y = batch
        loss = F.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, index):
        x, y = batch
        self.log("val/loss", F.mse_loss(self.layer(x), y))

    def stop(self) -> None:
        if self.how == "error":
            raise RuntimeError("boom")
        if self.how == "sigint":
            raise KeyboardInterrupt
        if self.how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def _fit(handle, how: str | None) -> None:
    with checkpoint_directory(None, handle.run_id) as ckpt_dir, run_guard(handle, ckpt_dir):
        trainer = L.Trainer(
            max_epochs=5, logger=BufferedMLFlowLogger(handle, flush_every_s=3600, spill_dir=ckpt_dir),
            callbacks=[ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_on_train_epoch_end=True,
                                       enable_version_counter=False),
                       MlflowCheckpointMirror(handle, ckpt_dir)],
            enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
            accelerator="cpu", devices=1)
        trainer.fit(Tiny(how), train_dataloaders=_loader(), val_dataloaders=_loader())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("stops")  # one store, a run per test: creating one costs seconds
    return open_store(f"sqlite:///{root / 'mlflow.db'}", str(root / "mlartifacts"))


@pytest.fixture
def handle(store):
    return open_run(store, "stops", "tiny", {}, {"trainer": {"max_epochs": 5}})


def _mirrored_epoch(handle) -> tuple[int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        local = handle.client.download_artifacts(handle.run_id, LAST_ARTIFACT, tmp)
        checkpoint = torch.load(local, map_location="cpu", weights_only=True)
    return checkpoint["epoch"], checkpoint[RUN_ID_KEY]


def _assert_nothing_lost(handle) -> None:
    history = handle.client.get_metric_history(handle.run_id, "val/loss")
    assert len(history) == STOP_EPOCH  # every completed epoch, though the buffer never filled
    assert len(handle.client.get_metric_history(handle.run_id, "train/loss")) == STOP_EPOCH
    # the last checkpoint is that of the last completed epoch, stamped with its run
    assert _mirrored_epoch(handle) == (STOP_EPOCH - 1, handle.run_id)
    # and it stays on disk to resume from, whatever happens to the store
    assert (kept_checkpoint_dir(handle.run_id) / "last.ckpt").is_file()


def test_an_error_marks_the_run_failed_and_loses_nothing(handle) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        _fit(handle, "error")
    assert handle.client.get_run(handle.run_id).info.status == "FAILED"
    _assert_nothing_lost(handle)


def test_ctrl_c_marks_the_run_killed_with_the_resume_hint(handle) -> None:
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(TrainingInterrupted) as stopped:
            _fit(handle, "sigint")
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after a Ctrl-C
    assert str(stopped.value) == (f"training stopped by SIGINT; continue it with "
                                  f"trainer.resume={handle.run_id}")
    assert handle.client.get_run(handle.run_id).info.status == "KILLED"
    _assert_nothing_lost(handle)


def test_sigterm_marks_the_run_killed_with_the_resume_hint(handle) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        _fit(handle, "sigterm")
    assert str(stopped.value) == (f"training stopped by SIGTERM; continue it with "
                                  f"trainer.resume={handle.run_id}")
    assert handle.client.get_run(handle.run_id).info.status == "KILLED"
    _assert_nothing_lost(handle)
    assert signal.getsignal(signal.SIGTERM) is before  # the guard put the handler back


def test_a_finished_run_is_finished_and_its_local_checkpoints_are_gone(handle) -> None:
    _fit(handle, None)
    assert handle.client.get_run(handle.run_id).info.status == "FINISHED"
    assert len(handle.client.get_metric_history(handle.run_id, "val/loss")) == 5
    assert _mirrored_epoch(handle)[0] == 4
    assert not kept_checkpoint_dir(handle.run_id).exists()


def test_sigterm_outside_fit_stops_the_other_stages_too(handle) -> None:
    """After fit (test, publish), no Lightning handler is there: the guard's own stops the run."""
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM"):
        with run_guard(handle):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # Python runs the handler between bytecodes
                pass
    assert handle.client.get_run(handle.run_id).info.status == "KILLED"
