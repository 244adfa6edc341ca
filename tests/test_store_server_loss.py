"""A tracking server lost mid-training (tracking=server) does not throw the training away: it
finishes when the server comes back in time, or stops in one line naming the local checkpoint
to resume from, and resuming from it completes the same run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port, run_cli, stop_process_group, wait_for_http
from tests.test_resume import _mirrored_epoch

pytestmark = pytest.mark.slow
NAME = "sine-forecaster"
ARGS = ["data.params.points=3000", "data.lookback=20", "model.hidden_size=16",
        "trainer.max_epochs=6", "trainer.early_stopping_patience=0", "tracking.flush_every_s=0.5",
        "trainer.progress_bar=false", "trainer.model_summary=false", "tracking=server"]


class MlflowServer:
    """A real `mlflow server` on one 127.0.0.1 port, which can be killed and started again on the
    same port, store and artifacts."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 120) -> None:
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for_http(f"{self.uri}/health", self.proc, self.root / "server.log", timeout, "mlflow server")

    def kill(self) -> None:
        """As a crash would: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process_group(self.proc)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # this process's polling too
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def _train(server: MlflowServer, cwd: Path, env: dict, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.train", *ARGS,
                             f"tracking.uri={server.uri}", *extra],
                            cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_epoch(client: MlflowClient, proc: subprocess.Popen, epoch: int, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        experiment = client.get_experiment_by_name("sine")
        for run in client.search_runs([experiment.experiment_id]) if experiment else []:
            mirrored = _mirrored_epoch(client, run.info.run_id)
            if mirrored is not None and mirrored >= epoch:
                return run.info.run_id
        time.sleep(0.3)
    raise AssertionError(f"no run mirrored epoch {epoch}; exit code {proc.poll()}")


def _assert_complete(client: MlflowClient, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    epoch_at = {p.step: int(p.value) for p in client.get_metric_history(run_id, "epoch")}
    steps = [p.step for p in client.get_metric_history(run_id, "val/loss")]
    assert steps == sorted(set(steps))
    assert [epoch_at[s] for s in steps] == [0, 1, 2, 3, 4, 5]  # every epoch's curve, once
    assert "test/mse" in run.data.metrics
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [v.run_id for v in versions] == [run_id]
    experiment = client.get_experiment_by_name("sine")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]


def test_training_rides_out_a_server_that_comes_back(tmp_path, server, env) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = _train(server, work, env, "tracking.retry_for_s=240")
    client = MlflowClient(server.uri)
    run_id = _wait_for_epoch(client, proc, 0)
    server.kill()
    time.sleep(8)  # training goes on meanwhile, its metrics buffered
    server.start()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"(id {run_id})" in out
    assert "is not answering" in out + err and "answers again" in out + err  # seen, ridden out
    _assert_complete(client, run_id)
    assert list(work.iterdir()) == []  # nothing written locally for a server store


def test_a_server_gone_for_too_long_stops_in_one_line_and_the_run_resumes(tmp_path, server, env) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc = _train(server, work, env, "tracking.retry_for_s=10")
    client = MlflowClient(server.uri)
    run_id = _wait_for_epoch(client, proc, 1)
    server.kill()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking server {server.uri} has not answered for "), last
    match = re.search(r"its last checkpoint is kept at (\S+); once the server is back, continue it "
                      r"with trainer.resume=(\S+)$", last)
    assert match and match.group(1) == match.group(2), last
    checkpoint = Path(match.group(1))
    assert checkpoint.is_file() and run_id in str(checkpoint)

    server.start()
    done = run_cli([*ARGS, f"tracking.uri={server.uri}", f"trainer.resume={checkpoint}"], cwd=work,
                   env_extra={k: env[k] for k in ("XDG_STATE_HOME", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"(id {run_id})" in done.stdout  # the same run, not a new one
    _assert_complete(client, run_id)
    assert not checkpoint.exists()  # the kept checkpoint goes once the run has finished
