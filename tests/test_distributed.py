"""DDP on CPU (gloo, 2 processes) through the real entry point: one run, one version, metrics
over the whole test set, identical weights on every rank."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.distributed import is_global_zero
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("env,zero", [
    ({}, True),
    ({"LOCAL_RANK": "1"}, False),
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # first process of the second node
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, True),
    ({"RANK": "3"}, False),
    ({"SLURM_PROCID": "2"}, False),
])
def test_rank_zero_is_known_before_the_trainer_exists(monkeypatch, env, zero) -> None:
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_global_zero() is zero


def test_two_process_ddp_logs_once_with_full_set_metrics(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_cli([*TINY, "trainer=ddp", "trainer.devices=2", f"tracking.uri={uri}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("run:     lstm-sine-") == 1  # only rank zero reports

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert len(client.search_model_versions("name='sine-forecaster'")) == 1
    assert run.data.tags["world_size"] == "2"
    digests = run.data.tags["ddp_weights_digests"].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]

    # The synced test MSE equals the MSE over every test window, each counted once, as computed
    # in one process from the saved predictions (no padding duplicates, not rank zero's half).
    local = client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv", str(tmp_path))
    preds = pd.read_csv(local)
    burn_in = int(run.data.params["data.burn_in"])
    scored = preds[preds["step"] >= burn_in]
    full_mse = float(np.mean((scored["y_true"] - scored["y_pred"]) ** 2))
    assert run.data.metrics["test/mse"] == pytest.approx(full_mse, rel=1e-4)
    assert preds["window"].nunique() % 2 == 1  # odd: a padded sampler would have double-counted one


def test_two_process_ddp_over_a_universe_shards_windows_and_counts_each_once(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_cli(["data=universe_synthetic", "data.params.n_series=9", "data.params.days=220",
                    "data.lookback=10", "data.min_windows=5", "data.batch_size=64",
                    "model.hidden_size=8", "trainer=ddp", "trainer.devices=2",
                    "trainer.max_epochs=1", "trainer.progress_bar=false",
                    "trainer.model_summary=false", f"tracking.uri={uri}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("run:     lstm-universe_synthetic-") == 1
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].data.tags["world_size"] == "2"
    run = runs[0]
    digests = run.data.tags["ddp_weights_digests"].split(",")
    assert len(digests) == 2 and digests[0] == digests[1]
    assert len(client.search_model_versions("name='universe_synthetic-forecaster'")) == 1
    # Each rank scored its shard of the test windows; the synced MSE is the one over every
    # window of every series, as rank zero's predictions of the whole split give it.
    local = client.download_artifacts(run.info.run_id, "predictions/test_predictions.csv", str(tmp_path))
    preds = pd.read_csv(local)
    full_mse = float(np.mean((preds["y_true"] - preds["y_pred"]) ** 2))
    assert run.data.metrics["test/mse"] == pytest.approx(full_mse, rel=1e-4)
    assert preds["series"].nunique() == int(run.data.metrics["test/series"])
