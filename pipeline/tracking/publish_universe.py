"""After training on a universe: metrics per series and across series, the artifacts people look
at (a MASE histogram, forecasts of the best, median and worst series, the per-series table, the
series dropped or not fetched) and the model version, whose pyfunc takes a `series` column."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml

from pipeline.data.universe import DATE, SERIES, UniverseData
from pipeline.evaluate_universe import per_series_metrics, universe_metrics, universe_predictions
from pipeline.intervals import calibration_curves
from pipeline.models.network import Forecaster
from pipeline.secrets import redact
from pipeline.tracking.champion import save_test_windows
from pipeline.tracking.plots import (
    plot_calibration,
    plot_loss_curve,
    plot_mase_by_series,
    plot_series_forecasts,
)
from pipeline.tracking.publish import input_example, loss_history, publish_model_with_example
from pipeline.tracking.pyfunc import LoggedModel
from pipeline.tracking.run import RunHandle

# The champion is re-scored on the challenger's saved test windows; over thousands of series
# those are millions of windows, so at most this many are kept, spread evenly over them all.
SAVED_WINDOWS = 50_000
# The series whose forecasts are drawn: the best, the median and the worst by MASE.
DRAWN = ("best", "median", "worst")


def drawn_series(table: pd.DataFrame) -> dict[str, str]:
    """code -> caption for the best, median and worst series by MASE (table sorted by MASE)."""
    picks = {"best": 0, "median": len(table) // 2, "worst": len(table) - 1}
    captions: dict[str, str] = {}
    for name in DRAWN:
        row = table.iloc[picks[name]]
        captions.setdefault(str(row[SERIES]), f"{name} MASE {row['mase']:.3f}")
    return captions


def saved_windows(universe: UniverseData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw test windows x (W, lookback, inputs), y (W, horizon, targets) and their series codes,
    at most SAVED_WINDOWS of them, evenly spread."""
    windows = universe.windows["test"]
    picked = np.unique(np.linspace(0, len(windows) - 1, min(len(windows), SAVED_WINDOWS)).astype(np.int64))
    frame = universe.frame
    x = frame[universe.inputs].to_numpy(dtype=np.float64)[windows.input_rows(picked)]
    y = frame[universe.targets].to_numpy(dtype=np.float64)[windows.rows(picked)]
    codes = np.asarray(universe.series, dtype=str)[windows.series_ids[picked]]
    return x, y, codes


def log_metrics(handle: RunHandle, metrics: Mapping[str, float]) -> None:
    handle.client.log_batch(handle.run_id, metrics=[
        mlflow.entities.Metric(k, float(v), 0, 0) for k, v in metrics.items()])
    if "test/mase_median" in metrics:
        handle.client.set_tag(handle.run_id, "beats_persistence",
                              str(metrics["test/mase_median"] < 1).lower())


def left_out(universe: UniverseData) -> pd.DataFrame:
    """The series not in the model and why: too little history (dropped), or not fetched."""
    rows = [(code, "dropped", why) for code, why in universe.dropped.items()]
    rows += [(code, "not fetched", why) for code, why in (universe.failed or {}).items()]
    return pd.DataFrame(rows, columns=[SERIES, "status", "reason"])


def write_files(handle: RunHandle, universe: UniverseData, preds: pd.DataFrame,
                table: pd.DataFrame, config: Mapping[str, Any], history, out: Path) -> None:
    (out / "config").mkdir()
    (out / "config" / "config.yaml").write_text(yaml.safe_dump(redact(dict(config)), sort_keys=False))
    (out / "predictions").mkdir()
    preds.to_csv(out / "predictions" / "test_predictions.csv", index=False)
    (out / "evaluation").mkdir()
    table.to_csv(out / "evaluation" / "per_series_metrics.csv", index=False, float_format="%.6g")
    left_out(universe).to_csv(out / "evaluation" / "series_left_out.csv", index=False)
    x, y, codes = saved_windows(universe)
    save_test_windows(out / "evaluation" / "test_windows.npz", x, y, 0, series=codes)
    title = handle.run_name
    plot_loss_curve(history, out / "plots" / "loss_curve.png", title=f"{title}: loss")
    plot_mase_by_series(table, out / "plots" / "mase_by_series.png",
                        title=f"{title}: MASE by series")
    captions = drawn_series(table)
    first_step = preds[preds["step"] == 0]
    # From the validation cut on: the test forecasts are readable, with what came just before.
    frame = universe.frame
    history_rows = frame[frame[SERIES].isin(list(captions))
                         & (frame[DATE] >= universe.cut_dates["val"])]
    plot_series_forecasts(history_rows[[DATE, SERIES, *universe.targets]], first_step,
                          captions, out / "plots" / "forecast.png",
                          title=f"{title}: one step ahead")


def publish_universe(handle: RunHandle, net: Forecaster, universe: UniverseData,
                     config: Mapping[str, Any], best_checkpoint: str | None,
                     registered_model: str | None, log_model: bool = True) -> LoggedModel | None:
    """Per-series and aggregate metrics, artifacts, the best checkpoint and the model version."""
    preds = universe_predictions(net, universe, "test")
    table = per_series_metrics(preds)
    metrics = universe_metrics(preds, table)
    log_metrics(handle, metrics)
    handle.client.set_tag(handle.run_id, "series", str(len(universe.series)))
    with tempfile.TemporaryDirectory(prefix="run-files-") as tmp:
        write_files(handle, universe, preds, table, config, loss_history(handle), Path(tmp))
        curves = calibration_curves(metrics)
        if curves:
            plot_calibration(curves, Path(tmp) / "plots" / "calibration.png",
                             title=f"{handle.run_name}: interval calibration, all series")
        handle.client.log_artifacts(handle.run_id, tmp)
    if best_checkpoint:
        handle.client.log_artifact(handle.run_id, best_checkpoint, "checkpoints")
    if not log_model:
        return None
    return publish_model_with_example(handle, net, input_example(universe), registered_model)
