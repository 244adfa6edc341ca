"""A run stopped by SIGTERM (as a scheduler pre-empts a job) keeps every completed epoch and its
last checkpoint, and resumes into the same MLflow run; a resume target that is not a checkpoint
is refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.tracking.checkpoints import LAST_ARTIFACT, resolve_resume
from pipeline.tracking.store import open_store
from tests.conftest import run_cli

# Slow enough per epoch (about 1-2 s on 2 cores) to interrupt between epochs reliably. Metrics are
# flushed only at the end (flush_every_s=3600): whatever the store holds after the stop was
# written by the flush on SIGTERM.
ARGS = ["data.params.points=3000", "data.lookback=20", "model.hidden_size=16",
        "trainer.max_epochs=6", "trainer.early_stopping_patience=0", "tracking.flush_every_s=3600",
        "trainer.last_checkpoint_every_s=0",  # last.ckpt every epoch: the test stops after epoch 1
        "trainer.progress_bar=false", "trainer.model_summary=false"]


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _mirrored_epoch(client: MlflowClient, run_id: str) -> int | None:
    """The epoch of the last.ckpt mirrored into the run (None: none yet)."""
    if not any(a.path == LAST_ARTIFACT for a in client.list_artifacts(run_id, "checkpoints")):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, LAST_ARTIFACT, tmp)
            return torch.load(local, map_location="cpu", weights_only=True)["epoch"]
        except (MlflowException, OSError, RuntimeError, EOFError):
            return None  # caught mid-upload: look again


def _wait_for_epoch(client: MlflowClient, proc: subprocess.Popen, epoch: int,
                    timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                mirrored = _mirrored_epoch(client, run.info.run_id)
                if mirrored is not None and mirrored >= epoch:
                    return run.info.run_id
        time.sleep(0.3)
    raise AssertionError(f"no run mirrored epoch {epoch}; exit code {proc.poll()}")


@pytest.mark.slow
def test_sigterm_then_resume_by_run_id_continues_the_same_run(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *ARGS, f"tracking.uri={uri}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    client = MlflowClient(uri)
    run_id = _wait_for_epoch(client, proc, 1)  # epochs 0 and 1 done: two completed epochs
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == (f"error: training stopped by SIGTERM; continue it with "
                                            f"trainer.resume={run_id}")
    assert client.get_run(run_id).info.status == "KILLED"
    last_epoch = _mirrored_epoch(client, run_id)
    assert 1 <= last_epoch < 5
    epoch_at = {p.step: int(p.value) for p in client.get_metric_history(run_id, "epoch")}
    validated = [epoch_at[p.step] for p in client.get_metric_history(run_id, "val/loss")]
    # every completed epoch's curve is in the store, though the buffer was never due
    assert set(range(last_epoch + 1)) <= set(validated)
    trained = {epoch_at.get(p.step) for p in client.get_metric_history(run_id, "train/loss")}
    assert set(range(last_epoch + 1)) <= trained
    assert client.search_model_versions("name='sine-forecaster'") == []

    done = run_cli([*ARGS, f"tracking.uri={uri}", f"trainer.resume={run_id}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(id {run_id})" in done.stdout

    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]  # no second run
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val/loss")
    steps = [p.step for p in history]
    assert len(history) == 6  # the remaining epochs only, not a restart
    assert steps == sorted(set(steps))  # step numbers continue, none repeated
    epoch_at = {p.step: int(p.value) for p in client.get_metric_history(run_id, "epoch")}
    assert [epoch_at[step] for step in steps] == [0, 1, 2, 3, 4, 5]  # each epoch validated once
    versions = client.search_model_versions("name='sine-forecaster'")
    assert [v.run_id for v in versions] == [run_id]


@pytest.fixture
def store(tmp_path):
    return open_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _write_zip(path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a checkpoint")


@pytest.mark.parametrize("content", [
    b"plain text, not a checkpoint\n",
    b"\x80\x04\x95garbage pickle",
    b"",
    "zip",
    "tensor-dict",
])
def test_resume_from_a_file_that_is_no_checkpoint_is_one_config_error(tmp_path, store, content) -> None:
    path = tmp_path / "notes.ckpt"
    if content == "zip":
        _write_zip(path)
    elif content == "tensor-dict":
        torch.save({"weights": torch.ones(2)}, path)  # loads, but holds no model state
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        resolve_resume(str(path), store)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"trainer.resume={str(path)!r}: {path}")


def test_resume_from_a_missing_file_or_run_is_one_config_error(tmp_path, store) -> None:
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        resolve_resume(str(tmp_path / "missing.ckpt"), store)
    with pytest.raises(ConfigError, match=r"trainer.resume='0123abcd': no checkpoints/last.ckpt"):
        resolve_resume("0123abcd", store)
