"""A run stopped by SIGTERM (as a scheduler pre-empts a job) resumes into the same MLflow run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

# Slow enough per epoch (about 1-2 s on 2 cores) to interrupt between epochs reliably.
ARGS = ["data.params.points=3000", "data.lookback=20", "model.hidden_size=16",
        "trainer.max_epochs=6", "trainer.early_stopping_patience=0", "tracking.flush_every_s=0",
        "trainer.progress_bar=false", "trainer.model_summary=false"]


def _wait_for_epochs(client: MlflowClient, proc: subprocess.Popen, epochs: int, timeout: float = 240) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id]):
                history = client.get_metric_history(run.info.run_id, "val/loss")
                if len(history) >= epochs and any(
                        a.path == "checkpoints/last.ckpt"
                        for a in client.list_artifacts(run.info.run_id, "checkpoints")):
                    return run.info.run_id
        time.sleep(0.3)
    raise AssertionError(f"no run reached {epochs} epochs; exit code {proc.poll()}")


def test_sigterm_then_resume_by_run_id_continues_the_same_run(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.train", *ARGS, f"tracking.uri={uri}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    client = MlflowClient(uri)
    run_id = _wait_for_epochs(client, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == f"error: training stopped by SIGTERM; continue it with trainer.resume={run_id}"
    stopped = client.get_run(run_id)
    assert stopped.info.status == "KILLED", err[-2000:]
    epochs_before = len(client.get_metric_history(run_id, "val/loss"))
    assert 2 <= epochs_before < 6
    assert client.search_model_versions("name='sine-forecaster'") == []

    done = run_cli([*ARGS, f"tracking.uri={uri}", f"trainer.resume={run_id}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(id {run_id})" in done.stdout

    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]  # no duplicate run
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(run_id, "val/loss")
    steps = [p.step for p in history]
    assert len(history) == 6  # the remaining epochs only, not a restart
    assert steps == sorted(set(steps))  # step numbers continue, none repeated
    epoch_at = {p.step: int(p.value) for p in client.get_metric_history(run_id, "epoch")}
    assert [epoch_at[step] for step in steps] == [0, 1, 2, 3, 4, 5]  # each epoch validated once
    versions = client.search_model_versions("name='sine-forecaster'")
    assert [v.run_id for v in versions] == [run_id]
