"""The real entry point, end to end, against temporary tracking stores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, compose_config, run_cli

pytestmark = pytest.mark.slow

ARTIFACTS = {
    "config/config.yaml",
    "plots/loss_curve.png",
    "plots/forecast.png",
    "predictions/test_predictions.csv",
    "checkpoints/best.ckpt",
}


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_cli_twice_gives_two_runs_and_versions_and_a_clean_cwd(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):
        done = run_cli([*TINY, f"tracking.uri={uri}"], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "model:   sine-forecaster version 2" in done.stdout
    # Only the documented store appears in the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db"]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sine")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert len(runs) == 2
    run = runs[-1]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("lstm-sine-")
    # params: the resolved config, flattened
    assert run.data.params["model.hidden_size"] == "16"
    assert run.data.params["trainer.max_epochs"] == "3"
    assert run.data.params["data.lookback"] == "20"
    assert run.data.params["trainer.test_checkpoint"] == "best"
    assert "retrain.variants" not in run.data.params  # sections of other commands are not params
    # tags
    for tag in ("git_commit", "data_digest", "variant", "host", "torch_version", "lightning_version"):
        assert run.data.tags[tag], tag
    assert run.data.tags["variant"] == "lstm"
    # one value per epoch for the curves, final test metrics
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == 3
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 3
    for name in ("test/mse", "test/mae", "test/rmse"):
        assert np.isfinite(run.data.metrics[name])
    assert run.data.metrics["test/rmse"] == pytest.approx(np.sqrt(run.data.metrics["test/mse"]), rel=1e-4)
    assert ARTIFACTS <= _artifact_paths(client, run.info.run_id)

    versions = client.search_model_versions("name='sine-forecaster'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    latest = max(versions, key=lambda v: int(v.version))
    assert latest.run_id == run.info.run_id
    assert latest.tags["variant"] == "lstm"
    assert latest.tags["data_digest"] == run.data.tags["data_digest"]


def test_bad_override_fails_in_one_line_and_leaves_no_running_run(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_cli([*TINY, "model.hidden_size=-3", f"tracking.uri={uri}"], cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["error: model.hidden_size=-3: must be >= 1"]
    assert not (tmp_path / "mlartifacts").exists()
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(uri)
        assert client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'"
        ) == []


def test_unknown_group_choice_is_one_line(tmp_path) -> None:
    done = run_cli(["data=nope"], cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: data='nope' is not a known data config; choose one of: ")
    assert "sine" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_default_sine_run_meets_the_accuracy_bar_and_model_serves_raw_values(store) -> None:
    """The default experiment (no overrides but quiet output) must reach test MSE <= 0.01, and the
    registered pyfunc model must reproduce the network's raw-scale predictions."""
    import mlflow

    from pipeline.training import train

    cfg = compose_config("trainer.progress_bar=false", "trainer.model_summary=false")
    result = train(cfg)
    assert result.test_metrics["test/mse"] <= 0.01

    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    points, periods = cfg.data.params["points"], cfg.data.params["periods"]
    t = np.linspace(0, 2 * np.pi * periods, points)[-cfg.data.lookback:]
    out = model.predict(pd.DataFrame({"sin": np.sin(t)}))
    assert list(out.columns) == ["step", "cos"] and len(out) == cfg.data.lookback
    scored = slice(cfg.data.burn_in, None)
    # raw-scale output: close to the true cosine, not to its standardised version
    assert np.mean((out["cos"].to_numpy()[scored] - np.cos(t)[scored]) ** 2) < 0.01

    # A bad request is MLflow's invalid-parameter error (HTTP 400 from its scoring server). The
    # model's own checks answer in one line (an all-NaN request is refused, not answered NaN);
    # a missing column or a wrong type is caught earlier by MLflow's signature enforcement.
    from mlflow.exceptions import MlflowException

    ours = {"all-NaN": (pd.DataFrame({"sin": [np.nan] * cfg.data.lookback}), "NaN"),
            "too few rows": (pd.DataFrame({"sin": np.sin(t)[:5]}), "5 rows")}
    for case, (frame, named) in ours.items():
        with pytest.raises(MlflowException) as refused:
            model.predict(frame)
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE", case
        assert "\n" not in refused.value.message and named in refused.value.message, case
    for frame in (pd.DataFrame({"cos": np.sin(t)}), pd.DataFrame({"sin": ["x"] * cfg.data.lookback})):
        with pytest.raises(MlflowException) as refused:
            model.predict(frame)
        assert refused.value.error_code == "INVALID_PARAMETER_VALUE" and "sin" in refused.value.message


def test_type_errors_and_typos_fail_in_one_line_before_the_training_stack_loads(tmp_path) -> None:
    """What a new user types first: a word for a number, a misspelt key. One line each, exit 2,
    and no store at all (the check runs before MLflow or Lightning is imported)."""
    for args, line in ((["trainer.max_epochs=abc"], "error: trainer.max_epochs: 'abc' is not an integer"),
                       (["model.hiden_size=64"], "error: model.hiden_size: unknown key; did you mean model.hidden_size?")):
        done = run_cli(args, cwd=tmp_path)
        assert (done.returncode, done.stderr.strip().splitlines()) == (2, [line])
        assert list(tmp_path.iterdir()) == []


def test_the_last_checkpoint_can_be_the_tested_one(store, tmp_path) -> None:
    """trainer.test_checkpoint=last: the test metrics are those of the run's last.ckpt (recomputed
    here from the artifact), and the choice is a param of the run."""
    import torch

    from pipeline.data.datamodule import prepare_data
    from pipeline.models.module import ForecastModule
    from pipeline.training import train

    cfg = compose_config(*TINY, "trainer.test_checkpoint=last", "trainer.early_stopping_patience=0")
    result = train(cfg)
    client = MlflowClient(store)
    assert client.get_run(result.run_id).data.params["trainer.test_checkpoint"] == "last"
    last = client.download_artifacts(result.run_id, "checkpoints/last.ckpt", str(tmp_path))
    module = ForecastModule.load_from_checkpoint(last, weights_only=True).eval()
    test = prepare_data(cfg.data).windows["test"]
    with torch.no_grad():
        pred = module.net.to_output(module.net(torch.as_tensor(test.x, dtype=torch.float32)))
    truth = module.net.unscale_y(torch.as_tensor(test.y, dtype=torch.float32))
    start = cfg.data.burn_in
    mse = torch.mean((pred[:, start:] - truth[:, start:]) ** 2).item()
    assert result.test_metrics["test/mse"] == pytest.approx(mse, rel=1e-4)
