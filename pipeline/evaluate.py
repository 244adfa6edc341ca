"""Evaluate stage: raw-scale predictions of every split, naive baselines on the same windows,
and the metrics that compare them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    mean_squared_error,
)
from torchmetrics.functional.classification import binary_accuracy

from pipeline.config import TASK_METRICS
from pipeline.data.prepare import PreparedData
from pipeline.data.windowing import SPLITS
from pipeline.errors import ConfigError
from pipeline.models.metrics import LOGGED_PER_EPOCH, binary_log_loss, exact_match
from pipeline.models.network import Forecaster

# The metrics score() gives each task, and which way is better: one table, the config's.
METRICS = TASK_METRICS


def predict_windows(net: Forecaster, x_scaled: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Scaled windows -> raw-scale predictions (W, steps, targets)."""
    net.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x_scaled), batch_size):
            # Windows are read-only strided views; copy each batch into a fresh tensor.
            batch = torch.tensor(x_scaled[start:start + batch_size], dtype=torch.float32,
                                 device=net.x_center.device)
            outputs.append(net.to_output(net(batch)).cpu().numpy())
    if outputs:
        return np.concatenate(outputs)
    steps = net.spec.lookback if net.spec.mode == "sequence" else net.spec.horizon
    return np.empty((0, steps, len(net.spec.targets)))


def predictions_frame(net: Forecaster, prepared: PreparedData, splits=SPLITS) -> pd.DataFrame:
    """One row per (split, window, step, target): where it sits in time, truth and prediction.

    `row` is the target's position in the fetched frame; `step` counts from 0 inside the window
    (sequence mode) or the horizon (forecast mode: step 0 is one step ahead).
    """
    index = prepared.frame.index
    parts = []
    for split in splits:
        windows = prepared.windows[split]
        if len(windows) == 0:
            continue
        pred = predict_windows(net, windows.x)
        truth = prepared.y_scaler.inverse(windows.y.reshape(-1, len(prepared.targets)))
        n_windows, n_steps, n_targets = pred.shape
        rows = np.repeat(windows.rows.reshape(-1), n_targets)
        parts.append(pd.DataFrame({
            "split": split,
            "window": np.repeat(np.arange(n_windows), n_steps * n_targets),
            "step": np.tile(np.repeat(np.arange(n_steps), n_targets), n_windows),
            "target": np.tile(prepared.targets, n_windows * n_steps),
            "row": rows,
            index.name or "index": index.to_numpy()[rows],
            "y_true": truth.reshape(-1),
            "y_pred": pred.reshape(-1),
        }))
    return pd.concat(parts, ignore_index=True)


def one_prediction_per_row(preds: pd.DataFrame, mode: str) -> pd.DataFrame:
    """For plotting a continuous line: the prediction made with the most context for each row.

    Sequence windows: the last step of each window; forecasts: the first horizon step.
    """
    step = preds["step"].max() if mode == "sequence" else 0
    return preds[preds["step"] == step]


def naive_forecasts(preds: pd.DataFrame, frame: pd.DataFrame, lag_of_step) -> np.ndarray:
    """The target's own past value `lag_of_step(h)` rows before each target row (NaN if none).

    Only values at or before the window's last input row are used, so baselines see no future.
    """
    horizon_step = preds["step"].to_numpy() + 1
    source_rows = preds["row"].to_numpy() - lag_of_step(horizon_step)
    out = np.full(len(preds), np.nan)
    for target in preds["target"].unique():
        mask = (preds["target"] == target).to_numpy() & (source_rows >= 0)
        out[mask] = frame[target].to_numpy(dtype=np.float64)[source_rows[mask]]
    return out


def baseline_predictions(preds: pd.DataFrame, frame: pd.DataFrame, mode: str,
                         season: int | None = None) -> dict[str, np.ndarray]:
    """Persistence (last observed value) and seasonal naive (same season, last cycle).

    They apply to forecasting only: in sequence mode (sin -> cos) the target is never observed.
    """
    if mode != "forecast":
        return {}
    baselines = {"persistence": naive_forecasts(preds, frame, lambda h: h)}
    if season:
        baselines["seasonal_naive"] = naive_forecasts(
            preds, frame, lambda h: season * np.ceil(h / season).astype(np.int64))
    return baselines


def _regression_scores(t: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
    t, p = t.reshape(-1), p.reshape(-1)
    mse = float(mean_squared_error(p, t))
    scores = {"mse": mse, "mae": float(mean_absolute_error(p, t)), "rmse": float(np.sqrt(mse))}
    if len(t) and bool((t > 0).all()):  # mape means something for prices, not for sin(t)
        scores["mape"] = float(mean_absolute_percentage_error(p, t))
    return scores


def _classification_scores(t: torch.Tensor, p: torch.Tensor) -> dict[str, float]:
    if t.numel() == 0:
        return dict.fromkeys(METRICS["classification"], float("nan"))
    t, p = t.reshape(len(t), -1).int(), p.reshape(len(p), -1)  # (samples, labels)
    return {"accuracy": float(binary_accuracy(p, t)), "log_loss": float(binary_log_loss(p, t)),
            "exact_match": float(exact_match(p, t))}


_SCORERS = {"regression": _regression_scores, "classification": _classification_scores}


def score(y_true: np.ndarray, y_pred: np.ndarray, task: str = "regression") -> dict[str, float]:
    """The task's metrics of predictions against truth, arrays of one shape.

    regression: mse, mae, rmse over every value, and mape where it means something (strictly
    positive targets, e.g. prices); any shape.
    classification: y_pred probabilities, y_true 0/1; accuracy and log_loss per label,
    exact_match per sample (every label right). The first axis is the sample, e.g.
    (samples, steps, targets); a 1-D array holds one label per sample.
    """
    if task not in _SCORERS:
        raise ConfigError(f"data.task={task!r}: unknown task; choose one of {', '.join(_SCORERS)}")
    t, p = torch.as_tensor(y_true, dtype=torch.float64), torch.as_tensor(y_pred, dtype=torch.float64)
    return _SCORERS[task](t, p)


def metrics_with_baselines(preds: pd.DataFrame, frame: pd.DataFrame, mode: str,
                           season: int | None = None, scored_from: int = 0,
                           task: str = "regression") -> dict[str, float]:
    """The final test metrics ForecastModule does not log (those are LOGGED_PER_EPOCH[task]).

    Regression: test/mape (strictly positive targets), then per baseline (persistence, and
    seasonal_naive when `season` is set; forecast mode only) test/<baseline>_<mse|mae|rmse|mape>
    and MASE = model MAE / baseline MAE as test/mase (persistence) and test/mase_seasonal_naive.
    Every method is scored on exactly the same test targets. Classification: nothing (no label
    baselines yet; the module logs accuracy, log_loss and exact_match).
    """
    if task == "classification":
        return {}
    test = preds[(preds["split"] == "test") & (preds["step"] >= scored_from)]
    baselines = baseline_predictions(test, frame, mode, season)
    # Score every method on the targets every baseline can forecast, so the comparison is fair.
    usable = np.ones(len(test), dtype=bool)
    for values in baselines.values():
        usable &= ~np.isnan(values)
    y_true = test["y_true"].to_numpy()[usable]
    model = score(y_true, test["y_pred"].to_numpy()[usable], task)
    metrics = {f"test/{k}": v for k, v in model.items() if k not in LOGGED_PER_EPOCH[task]}
    for name, values in baselines.items():
        base = score(y_true, values[usable])
        metrics.update({f"test/{name}_{k}": v for k, v in base.items()})
        ratio_name = "test/mase" if name == "persistence" else f"test/mase_{name}"
        metrics[ratio_name] = model["mae"] / base["mae"] if base["mae"] > 0 else float("inf")
    return metrics
