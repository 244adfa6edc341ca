"""The store, end to end, through the real entry points (issue 12):

- new-store race: four trainings started together on a store that does not exist yet all finish
  (the first creation of a sqlite store used to break 3 of 4 with alembic errors);
- second-store URI: with MLFLOW_TRACKING_URI pointing at one store and tracking.uri= at another,
  every entry point (train, promote, retrain, experiments, report) works in the configured one
  and never creates the other, nor a stray ./mlflow.db.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.champion import CHAMPION, load_test_windows, score_on_windows
from pipeline.tracking.pyfunc import load_registered_network
from pipeline.tracking.store import open_store
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow
NAME = "sine-forecaster"
QUICK = ["trainer.max_epochs=2", "trainer.early_stopping_patience=0"]


class Stores:
    """B: the configured store (tracking.uri); A: where MLFLOW_TRACKING_URI points, never to be
    created. `work` is the working directory of every command."""

    def __init__(self, root: Path) -> None:
        self.work, self.elsewhere = root / "work", root / "elsewhere"
        self.work.mkdir()
        self.elsewhere.mkdir()
        self.b_db = root / "configured" / "b.db"
        self.b_db.parent.mkdir()
        self.b = f"sqlite:///{self.b_db}"
        self.a = f"sqlite:///{self.elsewhere / 'a.db'}"
        self.env = {"MLFLOW_TRACKING_URI": self.a, "XDG_STATE_HOME": str(root / "state"),
                    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        self.client = MlflowClient(self.b, self.b)

    def args(self, *extra: str) -> list[str]:
        return [f"tracking.uri={self.b}", f"tracking.artifact_root={self.b_db.parent / 'artifacts'}",
                *extra]

    def run(self, module: str, *extra: str) -> subprocess.CompletedProcess:
        done = run_cli(self.args(*extra), cwd=self.work, env_extra=self.env, module=module)
        assert done.returncode == 0, done.stderr[-3000:]
        self.assert_nothing_elsewhere()
        return done

    def assert_nothing_elsewhere(self) -> None:
        assert list(self.elsewhere.iterdir()) == []  # MLFLOW_TRACKING_URI's store: never created
        assert not (self.work / "mlflow.db").exists()  # nor MLflow's default one
        assert not (self.work / "mlruns").exists()

    def versions(self) -> list[int]:
        return sorted(int(v.version) for v in self.client.search_model_versions(f"name='{NAME}'"))

    def champion(self) -> str:
        return str(self.client.get_model_version_by_alias(NAME, CHAMPION).version)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    """Four trainings started at once on a store that does not exist yet."""
    stores = Stores(tmp_path_factory.mktemp("stores"))
    env = {**os.environ, **stores.env}
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.train", *TINY, *QUICK, f"seed={seed}",
                               *stores.args()], cwd=stores.work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for seed in range(4)]
    outputs = [p.communicate(timeout=900) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    return stores


@pytest.fixture(autouse=True)
def same_env_here(stores, monkeypatch) -> None:
    """The checks made in this process see the environment the commands ran with."""
    for name, value in stores.env.items():
        monkeypatch.setenv(name, value)


def test_four_trainings_on_a_new_store_all_finish_with_unique_versions(stores) -> None:
    assert stores.b_db.is_file()
    stores.assert_nothing_elsewhere()
    experiment = stores.client.get_experiment_by_name("sine")
    runs = stores.client.search_runs([experiment.experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert stores.versions() == [1, 2, 3, 4]
    # @champion sits on the best of the four on common windows (every run saw the same data)
    store = open_store(stores.b)
    windows = load_test_windows(store, runs[0].info.run_id)
    scores = {str(v): score_on_windows(load_registered_network(store, NAME, v), windows, "mse")
              for v in stores.versions()}
    assert stores.champion() == min(scores, key=scores.get)


def test_promote_works_in_the_configured_store(stores) -> None:
    done = stores.run("pipeline.promote", "promotion.version=1")
    assert done.stdout.strip().splitlines()[-1].startswith(f"{NAME} v1: ")
    tags = stores.client.get_model_version(NAME, "1").tags
    assert tags["promotion.metric"] == "mse"


def test_retrain_works_in_the_configured_store(stores, tmp_path) -> None:
    before = stores.versions()
    stores.run("pipeline.retrain", *TINY, *QUICK, "retrain.variants=[gru]",
               f"retrain.output_dir={tmp_path}")
    assert stores.versions() == [*before, before[-1] + 1]
    assert (tmp_path / "retrain_summary.json").is_file()


def test_experiments_work_in_the_configured_store(stores) -> None:
    runs_before = len(stores.client.search_runs(
        [e.experiment_id for e in stores.client.search_experiments()]))
    stores.run("pipeline.experiments", "experiments.mode=quick", "experiments.studies=[sine_cosine]",
               "experiments.variants=[lstm]")
    runs = stores.client.search_runs([e.experiment_id for e in stores.client.search_experiments()])
    assert len(runs) == runs_before + 1
    assert any(r.data.tags.get("study") == "sine_cosine" for r in runs)


def test_report_reads_the_configured_store(stores, tmp_path) -> None:
    stores.run("pipeline.report", "report.mode=quick", f"report.output={tmp_path}")
    assert "sine_cosine" in (tmp_path / "studies.md").read_text()
