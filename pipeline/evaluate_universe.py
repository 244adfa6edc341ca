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

from pipeline import intervals
from pipeline.data.universe import DATE, SERIES, UniverseData, UniverseWindows
from pipeline.evaluate import (
    directional_scores,
    forecast_columns,
    model_crps,
    naive_forecasts,
    score,
)
from pipeline.models.network import Forecaster

# Windows per forward pass: evaluation has no gradient, so a large batch costs only memory.
EVAL_BATCH = 4096


def forecast_universe(net: Forecaster, windows: UniverseWindows,
                      batch_size: int = EVAL_BATCH) -> dict[str, np.ndarray]:
    """Raw-scale forecast columns (W, steps, targets) of a split's windows, each by its series:
    y_pred, and a distribution head's y_q<level> (and y_mu, y_sigma, y_df), as
    pipeline.evaluate.predict_distribution gives them for one series."""
    net.eval()
    device = net.x_center.device
    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            x, _, ids = windows.batch(np.arange(start, min(start + batch_size, len(windows))))
            x = torch.from_numpy(x).to(device)
            series = torch.from_numpy(ids.astype(np.int64)).to(device)
            for name, values in forecast_columns(net, net(x, series=series), x, series).items():
                parts.setdefault(name, []).append(values.cpu().numpy())
    if parts:
        return {name: np.concatenate(values) for name, values in parts.items()}
    empty = np.empty((0, len(windows.target_offsets), len(net.spec.targets)))
    return {name: empty for name in forecast_columns(net, None)}


def universe_predictions(net: Forecaster, universe: UniverseData, split: str = "test") -> pd.DataFrame:
    """One row per (window, step, target) of a split: series, date, truth (the frame's level),
    forecast (and a distribution head's quantile columns), and persistence (the series' last
    observed value before the window's targets)."""
    windows = universe.windows[split]
    forecasts = forecast_universe(net, windows)
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
        **{name: values.reshape(-1) for name, values in forecasts.items()},
    })
    # Frame rows run series after series and a window's inputs are its own series' rows, so
    # `lag` rows back from a target is that series' value at the window's last input step.
    preds["persistence"] = naive_forecasts(preds, frame, lambda h: h)
    return preds


def _columns(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Copies: pandas hands out read-only views, which torch warns about when it wraps them.
    return tuple(rows[c].to_numpy(dtype=np.float64, copy=True)
                 for c in ("y_true", "y_pred", "persistence"))


def interval_scores_of(rows: pd.DataFrame) -> dict[str, float]:
    """A distribution head's coverage_<p>, width_<p>, pinball_q<level>, crps and coverage_error
    on these rows (empty for a point head), as pipeline.intervals scores one series."""
    columns = intervals.quantile_columns(rows)
    if not columns:
        return {}
    levels = list(columns)
    return intervals.interval_scores(rows["y_true"].to_numpy(dtype=np.float64),
                                     rows[list(columns.values())].to_numpy(dtype=np.float64),
                                     levels, model_crps(rows))


def per_series_metrics(preds: pd.DataFrame) -> pd.DataFrame:
    """One row per series: its test targets, the model's and persistence's errors, MASE and
    directional accuracy, sorted by MASE (best first); with a distribution head also its
    interval coverage and width, CRPS and coverage error."""
    rows = []
    for code, part in preds.groupby(SERIES, sort=True):
        y, p, last = _columns(part)
        model, base = score(y, p), score(y, last)
        row = {SERIES: code, "targets": len(part), **model,
               **{f"persistence_{k}": v for k, v in base.items()},
               "mase": model["mae"] / base["mae"] if base["mae"] > 0 else float("inf")}
        direction = directional_scores(y, p, last)
        row.update({k.removeprefix("test/"): v for k, v in direction.items()})
        row.update({k: v for k, v in interval_scores_of(part).items() if not k.startswith("pinball")})
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
    test/directional_accuracy, test/up_share; with a distribution head the interval scores of
    interval_scores_of pooled, and test/coverage_error_median over the series.
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
    # Coverage is scale-free, so pooled over every series it reads as it does for one; the
    # median coverage error says how well calibrated a typical series is.
    metrics.update({f"test/{k}": v for k, v in interval_scores_of(preds).items()})
    if "coverage_error" in table:
        metrics["test/coverage_error_median"] = float(table["coverage_error"].median())
    return metrics
