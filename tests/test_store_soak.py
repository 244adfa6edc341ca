"""Soak: 8 trainings and 4 `make promote` at once against one real mlflow server (sqlite backend,
loopback only). Every run finishes, versions are unique and gapless, @champion ends on the best
version by the promotion metric, and no lock is left held.

The figures (wall times) are printed, and written as JSON to $PIPELINE_SOAK_RESULTS when that is
set (benchmarks/results/tracking_soak.json was made so); the test asserts on behaviour only.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.champion import CHAMPION, load_test_windows, score_on_windows
from pipeline.tracking.pyfunc import load_registered_network
from pipeline.tracking.store import open_store
from tests.conftest import TINY
from tests.test_store_server_loss import MlflowServer

pytestmark = pytest.mark.slow
NAME = "sine-forecaster"
TRAININGS, PROMOTIONS = 8, 4


class Job:
    """A command in its own process, its output in files (no pipe to fill), its wall time."""

    def __init__(self, name: str, module: str, args: list[str], cwd: Path, env: dict) -> None:
        self.out, self.err = cwd.parent / f"{name}.out", cwd.parent / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                                         stdout=out, stderr=err)
        self.started, self.seconds = time.monotonic(), None

    def poll(self) -> int | None:
        code = self.proc.poll()
        if code is not None and self.seconds is None:
            self.seconds = time.monotonic() - self.started
        return code

    def stderr(self) -> str:
        return self.err.read_text()


def _wait_all(jobs: list[Job], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while [job for job in jobs if job.poll() is None]:  # every job polled: each end time is seen
        assert time.monotonic() < deadline, "soak jobs did not finish in time"
        time.sleep(0.2)


def test_eight_trainings_and_four_promotions_on_one_server(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    server = MlflowServer(tmp_path / "server")
    server.start()
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    common = ["tracking=server", f"tracking.uri={server.uri}"]
    try:
        start = time.monotonic()
        trainings = [Job(f"train-{seed}", "pipeline.train",
                         [*TINY, "trainer.max_epochs=2", f"seed={seed}", *common], work, env)
                     for seed in range(TRAININGS)]
        client = MlflowClient(server.uri)
        # The promotions start as soon as there is something to promote, amid the trainings.
        while not client.search_model_versions(f"name='{NAME}'"):
            failed = [job for job in trainings if job.poll() not in (None, 0)]
            assert not failed, "a training failed early:\n" + failed[0].stderr()[-3000:]
            time.sleep(0.5)
        promotions = [Job(f"promote-{n}", "pipeline.promote", common, work, env)
                      for n in range(PROMOTIONS)]
        _wait_all(trainings + promotions, timeout=1500)
        total = time.monotonic() - start

        for job in trainings + promotions:
            assert job.proc.returncode == 0, job.stderr()[-3000:]
        experiment = client.get_experiment_by_name("sine")
        runs = client.search_runs([experiment.experiment_id])
        assert len(runs) == TRAININGS and {r.info.status for r in runs} == {"FINISHED"}
        versions = client.search_model_versions(f"name='{NAME}'")
        assert sorted(int(v.version) for v in versions) == list(range(1, TRAININGS + 1))
        assert {v.run_id for v in versions} == {r.info.run_id for r in runs}  # one version per run

        store = open_store(server.uri)
        windows = load_test_windows(store, runs[0].info.run_id)  # one data set: common windows
        scores = {v.version: score_on_windows(load_registered_network(store, NAME, v.version),
                                              windows, "mse") for v in versions}
        champion = str(client.get_model_version_by_alias(NAME, CHAMPION).version)
        assert champion == min(scores, key=scores.get)

        with store.lock(f"promote:{NAME}", "soak: is the promotion lock free?", timeout_s=0.5):
            pass  # nobody holds it
    finally:
        server.stop()

    figures = {
        "what": f"{TRAININGS} trainings (TINY, 2 epochs, tracking=server, promotion on finish) and "
                f"{PROMOTIONS} concurrent `python -m pipeline.promote`, one mlflow server (sqlite "
                "backend, 1 worker) on 127.0.0.1",
        "host": platform.node(), "cpus": os.cpu_count(),
        "total_wall_s": round(total, 1),
        "training_wall_s": _spread([job.seconds for job in trainings]),
        "promote_wall_s": _spread([job.seconds for job in promotions]),
        "versions": len(versions), "champion": champion,
        "champion_mse": scores[champion],
    }
    print(json.dumps(figures, indent=2))
    if os.environ.get("PIPELINE_SOAK_RESULTS"):
        Path(os.environ["PIPELINE_SOAK_RESULTS"]).write_text(json.dumps(figures, indent=2) + "\n")


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1),
            "max": round(max(values), 1)}
