"""After training: the run's artifacts (config, plots, predictions, checkpoint), the honest
test metrics beside naive baselines, and the model version."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml

from pipeline.data.datamodule import PreparedData
from pipeline.data.universe import SERIES, UniverseData
from pipeline.evaluate import (
    metrics_with_baselines,
    one_prediction_per_row,
    predictions_frame,
    probabilistic_metrics,
    raw_targets,
)
from pipeline.intervals import calibration_curves
from pipeline.models.network import Forecaster
from pipeline.secrets import redact
from pipeline.tracking.champion import save_test_windows
from pipeline.tracking.plots import plot_calibration, plot_forecast, plot_loss_curve
from pipeline.tracking.pyfunc import SERIES_COLUMN, LoggedModel, log_forecaster
from pipeline.tracking.run import RunHandle

LOSS_METRICS = ("train/loss", "val/loss")


@dataclass(frozen=True)
class Evaluation:
    """How the test split is scored: skip the first `scored_from` steps; `season` for seasonal
    naive; the task chooses the metrics."""

    scored_from: int = 0
    season: int | None = None
    task: str = "regression"


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


# A universe model's logged input example holds two series: it shows the request it takes.
EXAMPLE_SERIES = 2


def input_example(prepared: PreparedData | UniverseData) -> pd.DataFrame:
    """The last lookback rows of raw inputs: exactly what a user passes to predict(); for a
    universe, those of its first two series one after the other, with their series column."""
    lookback = prepared.spec.lookback
    if isinstance(prepared, UniverseData):
        frame = prepared.frame
        parts = [frame.loc[frame[SERIES] == code, [SERIES, *prepared.inputs]].iloc[-lookback:]
                 for code in prepared.series[:EXAMPLE_SERIES]]
        return pd.concat(parts, ignore_index=True).rename(columns={SERIES: SERIES_COLUMN})
    return prepared.frame[prepared.inputs].iloc[-lookback:].reset_index(drop=True)


def log_baseline_metrics(handle: RunHandle, preds: pd.DataFrame, prepared: PreparedData,
                         evaluation: Evaluation) -> dict[str, float]:
    """Baselines, MAPE and MASE beside the test metrics the Trainer already logged."""
    # The Trainer's test loop logged the task's own metrics; these are the ones only a baseline
    # gives (one owner each: tests/test_evaluate.py).
    metrics = metrics_with_baselines(preds, prepared.frame, prepared.spec.mode, evaluation.season,
                                     evaluation.scored_from, task=evaluation.task)
    handle.client.log_batch(handle.run_id, metrics=[
        mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics.items()])
    if "test/mase" in metrics:
        handle.client.set_tag(handle.run_id, "beats_persistence", str(metrics["test/mase"] < 1).lower())
    return metrics


def log_interval_metrics(handle: RunHandle, net: Forecaster, prepared: PreparedData,
                         preds: pd.DataFrame, evaluation: Evaluation) -> dict[str, float]:
    """A probabilistic head's coverage, width, pinball and CRPS beside persistence's (and the
    split-conformal figures), on the windows the point metrics use; nothing for a point head."""
    metrics = probabilistic_metrics(net, prepared, evaluation.scored_from, evaluation.season,
                                    preds=preds)
    if metrics:
        handle.client.log_batch(handle.run_id, metrics=[
            mlflow.entities.Metric(k, v, 0, 0) for k, v in metrics.items()])
    return metrics


def write_run_files(handle: RunHandle, net: Forecaster, prepared: PreparedData, preds: pd.DataFrame,
                    config: Mapping[str, Any], evaluation: Evaluation, out: Path,
                    interval_metrics: Mapping[str, float] | None = None) -> None:
    (out / "config").mkdir()
    (out / "config" / "config.yaml").write_text(yaml.safe_dump(redact(dict(config)), sort_keys=False))
    (out / "predictions").mkdir()
    preds[preds["split"] == "test"].to_csv(out / "predictions" / "test_predictions.csv", index=False)
    test = prepared.windows["test"]
    save_test_windows(out / "evaluation" / "test_windows.npz", prepared.x_scaler.inverse(test.x),
                      raw_targets(prepared, test), evaluation.scored_from)
    title = handle.run_name
    plot_loss_curve(loss_history(handle), out / "plots" / "loss_curve.png", title=f"{title}: loss")
    plot_forecast(prepared.frame[prepared.targets], one_prediction_per_row(preds, prepared.spec.mode),
                  prepared.frame.index.name or "index", out / "plots" / "forecast.png",
                  title=f"{title}: forecast vs truth")
    if interval_metrics:
        plot_calibration(calibration_curves(interval_metrics), out / "plots" / "calibration.png",
                         title=f"{title}: interval calibration")


def publish_results(handle: RunHandle, net: Forecaster, prepared: PreparedData,
                    config: Mapping[str, Any], best_checkpoint: str | None,
                    registered_model: str | None, evaluation: Evaluation = Evaluation(),
                    log_model: bool = True) -> LoggedModel | None:
    """Baselines, artifacts, the best checkpoint and (unless `log_model` is false) the model.

    A sweep trial passes log_model=False: only the study's best trial gets a model, later, from
    the checkpoint kept here (publish_model), so the other trials skip the costliest step."""
    preds = predictions_frame(net, prepared)
    log_baseline_metrics(handle, preds, prepared, evaluation)
    interval_metrics = log_interval_metrics(handle, net, prepared, preds, evaluation)
    with tempfile.TemporaryDirectory(prefix="run-files-") as tmp:
        write_run_files(handle, net, prepared, preds, config, evaluation, Path(tmp), interval_metrics)
        handle.client.log_artifacts(handle.run_id, tmp)
    if best_checkpoint:
        handle.client.log_artifact(handle.run_id, best_checkpoint, "checkpoints")
    return publish_model(handle, net, prepared, registered_model) if log_model else None


def publish_model(handle: RunHandle, net: Forecaster, prepared: PreparedData,
                  registered_model: str | None) -> LoggedModel:
    """The pyfunc model in the run and, if named, a new version of `registered_model`, tagged."""
    return publish_model_with_example(handle, net, input_example(prepared), registered_model)


def publish_model_with_example(handle: RunHandle, net: Forecaster, example: pd.DataFrame,
                               registered_model: str | None) -> LoggedModel:
    """publish_model with the request `example` the model's signature is inferred from."""
    logged = log_forecaster(handle, net, example, registered_model)
    if logged.version:
        tag_version(handle, logged, net)
    return logged


def tag_version(handle: RunHandle, logged: LoggedModel, net: Forecaster) -> None:
    run = handle.client.get_run(handle.run_id)
    tags = {"variant": net.spec.label, "data_digest": run.data.tags.get("data_digest", ""),
            "run_name": handle.run_name}
    tags.update({k: f"{v:.6g}" for k, v in run.data.metrics.items() if k.startswith("test/")})
    for key, value in tags.items():
        handle.client.set_model_version_tag(logged.name, logged.version, key, value)
