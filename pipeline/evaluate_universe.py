"""Evaluate stage for a universe: raw-scale forecasts of every series' test windows, persistence
on the same targets, metrics per series (a table) and across series (aggregates).

A universe's series differ in price level, so pooled errors are dominated by the dearest
stocks; MASE (model MAE / persistence MAE, per series) is scale-free, and its mean, median and
the share of series below 1 say how the model does across the universe.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.data.universe import DATE, SERIES, UniverseData, UniverseWindows
from pipeline.evaluate import directional_scores, naive_forecasts, score
from pipeline.models.network import Forecaster

# Windows per forward pass: evaluation has no gradient, so a large batch costs only memory.
EVAL_BATCH = 4096


def predict_universe(net: Forecaster, windows: UniverseWindows,
                     batch_size: int = EVAL_BATCH) -> np.ndarray:
    """Raw-scale point forecasts (W, steps, targets) of a split's windows, each by its series."""
    net.eval()
    device = net.x_center.device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            x, _, ids = windows.batch(np.arange(start, min(start + batch_size, len(windows))))
            x = torch.from_numpy(x).to(device)
            series = torch.from_numpy(ids.astype(np.int64)).to(device)
            outputs.append(net.to_output(net(x, series=series), x, series).cpu().numpy())
    steps = len(windows.target_offsets)
    return (np.concatenate(outputs) if outputs
            else np.empty((0, steps, len(net.spec.targets))))


def universe_predictions(net: Forecaster, universe: UniverseData, split: str = "test") -> pd.DataFrame:
    """One row per (window, step, target) of a split: series, date, truth (the frame's level),
    forecast, and persistence (the series' last observed value before the window's targets)."""
    windows = universe.windows[split]
    predicted = predict_universe(net, windows)
    every = np.arange(len(windows))
    rows = windows.rows(every)  # (W, steps) frame positions of the targets
    n_windows, n_steps = rows.shape
    targets = universe.targets
    flat_rows = np.repeat(rows.reshape(-1), len(targets))
    frame = universe.frame
    preds = pd.DataFrame({
        "split": split,
        SERIES: frame[SERIES].to_numpy()[flat_rows],
        DATE: frame[DATE].to_numpy()[flat_rows],
        "window": np.repeat(every, n_steps * len(targets)),
        "step": np.tile(np.repeat(np.arange(n_steps), len(targets)), n_windows),
        "target": np.tile(targets, n_windows * n_steps),
        "row": flat_rows,
        "y_true": frame[targets].to_numpy(dtype=np.float64)[rows].reshape(-1),
        "y_pred": predicted.reshape(-1),
    })
    # Frame rows run series after series and a window's inputs are its own series' rows, so
    # `lag` rows back from a target is that series' value at the window's last input step.
    preds["persistence"] = naive_forecasts(preds, frame, lambda h: h)
    return preds


def _columns(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Copies: pandas hands out read-only views, which torch warns about when it wraps them.
    return tuple(rows[c].to_numpy(dtype=np.float64, copy=True)
                 for c in ("y_true", "y_pred", "persistence"))


def per_series_metrics(preds: pd.DataFrame) -> pd.DataFrame:
    """One row per series: its test targets, the model's and persistence's errors, MASE and
    directional accuracy, sorted by MASE (best first)."""
    rows = []
    for code, part in preds.groupby(SERIES, sort=True):
        y, p, last = _columns(part)
        model, base = score(y, p), score(y, last)
        row = {SERIES: code, "targets": len(part), **model,
               **{f"persistence_{k}": v for k, v in base.items()},
               "mase": model["mae"] / base["mae"] if base["mae"] > 0 else float("inf")}
        direction = directional_scores(y, p, last)
        row.update({k.removeprefix("test/"): v for k, v in direction.items()})
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["mase", SERIES], ignore_index=True)
    # What people read first (the MLflow UI previews a table from its left): MASE, direction.
    first = [SERIES, "mase", "directional_accuracy", "up_share", "mae", "persistence_mae"]
    return table[[*first, *(c for c in table.columns if c not in first)]]


def universe_metrics(preds: pd.DataFrame, table: pd.DataFrame) -> dict[str, float]:
    """The final test metrics the module does not log (it logs the pooled mse, mae, rmse):

    test/mase_mean, test/mase_median, test/share_beating_persistence (share of series with
    MASE < 1), test/series (series scored); pooled over every target as a single series' run
    reports them: test/mase, test/persistence_<mse|mae|rmse|mape>, test/mape,
    test/directional_accuracy, test/up_share.
    """
    y, p, last = _columns(preds)
    model, base = score(y, p), score(y, last)
    finite = table["mase"].replace([np.inf, -np.inf], np.nan).dropna()
    metrics = {
        "test/mase_mean": float(finite.mean()), "test/mase_median": float(finite.median()),
        "test/share_beating_persistence": float((table["mase"] < 1).mean()),
        "test/series": float(len(table)),
        "test/mase": model["mae"] / base["mae"] if base["mae"] > 0 else float("inf"),
        **{f"test/persistence_{k}": v for k, v in base.items()},
        **directional_scores(y, p, last),
    }
    if "mape" in model:
        metrics["test/mape"] = model["mape"]
    return metrics
