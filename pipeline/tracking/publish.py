"""After training: the run's artifacts (config, plots, predictions, checkpoint) and the model version."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml

from pipeline.data.datamodule import PreparedData
from pipeline.evaluate import one_prediction_per_row, predictions_frame
from pipeline.models.network import Forecaster
from pipeline.tracking.plots import plot_forecast, plot_loss_curve
from pipeline.tracking.pyfunc import LoggedModel, log_forecaster
from pipeline.tracking.run import RunHandle
from pipeline.tracking.secrets import redact

LOSS_METRICS = ("train/loss", "val/loss")


def loss_history(handle: RunHandle) -> dict[str, list[tuple[int, float]]]:
    """Per-epoch losses as the store recorded them (the plot shows what MLflow holds).

    MLflow steps are Lightning's global steps; the logged `epoch` metric maps them to epochs.
    """
    epoch_at = {p.step: int(p.value) for p in handle.client.get_metric_history(handle.run_id, "epoch")}
    history = {}
    for name in LOSS_METRICS:
        points = sorted(handle.client.get_metric_history(handle.run_id, name), key=lambda p: p.step)
        history[name] = [(epoch_at.get(p.step, p.step), p.value) for p in points]
    return history


def input_example(prepared: PreparedData) -> Any:
    """The last lookback rows of raw inputs: exactly what a user passes to predict()."""
    return prepared.frame[prepared.inputs].iloc[-prepared.spec.lookback:].reset_index(drop=True)


def write_run_files(handle: RunHandle, net: Forecaster, prepared: PreparedData,
                    config: Mapping[str, Any], out: Path) -> None:
    (out / "config").mkdir()
    (out / "config" / "config.yaml").write_text(yaml.safe_dump(redact(dict(config)), sort_keys=False))
    preds = predictions_frame(net, prepared)
    index_name = prepared.frame.index.name or "index"
    (out / "predictions").mkdir()
    preds[preds["split"] == "test"].to_csv(out / "predictions" / "test_predictions.csv", index=False)
    title = f"{handle.run_name}"
    plot_loss_curve(loss_history(handle), out / "plots" / "loss_curve.png", title=f"{title}: loss")
    plot_forecast(prepared.frame[prepared.targets], one_prediction_per_row(preds, prepared.spec.mode),
                  index_name, out / "plots" / "forecast.png", title=f"{title}: forecast vs truth")


def publish_results(handle: RunHandle, net: Forecaster, prepared: PreparedData,
                    config: Mapping[str, Any], best_checkpoint: str | None,
                    registered_model: str | None) -> LoggedModel:
    with tempfile.TemporaryDirectory(prefix="run-files-") as tmp:
        write_run_files(handle, net, prepared, config, Path(tmp))
        handle.client.log_artifacts(handle.run_id, tmp)
    if best_checkpoint:
        handle.client.log_artifact(handle.run_id, best_checkpoint, "checkpoints")
    with mlflow.start_run(run_id=handle.run_id):
        logged = log_forecaster(net, input_example(prepared), registered_model)
    if logged.version:
        tag_version(handle, logged, net)
    return logged


def tag_version(handle: RunHandle, logged: LoggedModel, net: Forecaster) -> None:
    run = handle.client.get_run(handle.run_id)
    tags = {"variant": net.spec.variant, "data_digest": run.data.tags.get("data_digest", ""),
            "run_name": handle.run_name}
    tags.update({k: f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith("test/")})
    for key, value in tags.items():
        handle.client.set_model_version_tag(logged.name, logged.version, key, value)
