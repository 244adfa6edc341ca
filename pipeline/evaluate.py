"""Evaluate stage: raw-scale predictions of every split, naive baselines on the same windows,
and the metrics that compare them; with a distribution head (model.head), intervals too."""

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

from pipeline import intervals
from pipeline.config import TASK_METRICS
from pipeline.data.prepare import PreparedData
from pipeline.data.windowing import SPLITS, Windows
from pipeline.errors import ConfigError
from pipeline.models.distributions import DENSE_LEVELS
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
            outputs.append(net.to_output(net(batch), batch).cpu().numpy())
    if outputs:
        return np.concatenate(outputs)
    steps = net.spec.lookback if net.spec.mode == "sequence" else net.spec.horizon
    return np.empty((0, steps, len(net.spec.targets)))


def predict_distribution(net: Forecaster, x_scaled: np.ndarray, batch_size: int = 1024,
                         series: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Scaled windows -> raw-scale forecast columns, each (W, steps, targets): y_pred (the point
    forecast, as predict_windows gives it) and, for a non-point head, y_q<level> per level of the
    spec, plus y_mu, y_sigma (gaussian, student_t) and y_df (student_t). `series`: a universe
    model's series id of each window."""
    net.eval()
    parts: dict[str, list[np.ndarray]] = {}
    device = net.x_center.device
    with torch.no_grad():
        for start in range(0, len(x_scaled), batch_size):
            batch = torch.tensor(x_scaled[start:start + batch_size], dtype=torch.float32,
                                 device=device)
            ids = (None if series is None else
                   torch.as_tensor(np.asarray(series[start:start + batch_size], dtype=np.int64),
                                   device=device))
            out = net(batch, series=ids)
            for name, values in forecast_columns(net, out, batch, ids).items():
                parts.setdefault(name, []).append(values.cpu().numpy())
    if parts:
        return {name: np.concatenate(values) for name, values in parts.items()}
    steps = net.spec.lookback if net.spec.mode == "sequence" else net.spec.horizon
    empty = np.empty((0, steps, len(net.spec.targets)))
    return {name: empty for name in forecast_columns(net, None)}


def forecast_columns(net: Forecaster, out: torch.Tensor | None, x: torch.Tensor | None = None,
                     series: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """forward()'s output -> the raw-scale columns of predict_distribution. `out` None: only
    the names (for an empty split); `x`: the scaled windows of `out`; `series`: their ids."""
    columns = {"y_pred": None if out is None else net.to_output(out, x, series)}
    if net.levels:
        quantiles = None if out is None else net.to_quantiles(out, x=x, series=series)
        for i, level in enumerate(net.levels):
            columns[intervals.quantile_column(level)] = None if out is None else quantiles[..., i]
    if net.spec.head in ("gaussian", "student_t"):
        params = net.to_parameters(out, series) if out is not None else dict.fromkeys(
            ("mu", "sigma", "df") if net.spec.head == "student_t" else ("mu", "sigma"))
        columns.update({f"y_{name}": values for name, values in params.items()})
    return columns


def window_rows(windows: Windows, prepared: PreparedData, split: str) -> pd.DataFrame:
    """One row per (window, step, target) of a split: where it sits in time and the truth.

    `row` is the target's position in the fetched frame; `step` counts from 0 inside the window
    (sequence mode) or the horizon (forecast mode: step 0 is one step ahead).
    """
    index = prepared.frame.index
    truth = raw_targets(prepared, windows)
    n_windows, n_steps = windows.rows.shape
    n_targets = len(prepared.targets)
    rows = np.repeat(windows.rows.reshape(-1), n_targets)
    return pd.DataFrame({
        "split": split,
        "window": np.repeat(np.arange(n_windows), n_steps * n_targets),
        "step": np.tile(np.repeat(np.arange(n_steps), n_targets), n_windows),
        "target": np.tile(prepared.targets, n_windows * n_steps),
        "row": rows,
        index.name or "index": index.to_numpy()[rows],
        "y_true": truth.reshape(-1),
    })


def raw_targets(prepared: PreparedData, windows: Windows) -> np.ndarray:
    """The windows' targets on the raw scale, (windows, steps, targets): read from the frame at
    their rows, so levels even where the windows hold changes (data.target_transform)."""
    return prepared.frame[prepared.targets].to_numpy(dtype=np.float64)[windows.rows]


def predictions_frame(net: Forecaster, prepared: PreparedData, splits=SPLITS) -> pd.DataFrame:
    """One row per (split, window, step, target): where it sits in time, truth and prediction
    (see window_rows), y_pred the point forecast; a non-point head adds its raw-scale quantile
    columns y_q<level> (e.g. y_q0.1, y_q0.5, y_q0.9) and its parameters (see
    predict_distribution)."""
    parts = []
    for split in splits:
        windows = prepared.windows[split]
        if len(windows) == 0:
            continue
        part = window_rows(windows, prepared, split)
        for name, values in predict_distribution(net, windows.x).items():
            part[name] = values.reshape(-1)
        parts.append(part)
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


def scored_test(preds: pd.DataFrame, frame: pd.DataFrame, mode: str, season: int | None,
                scored_from: int) -> tuple[pd.DataFrame, dict[str, np.ndarray], np.ndarray]:
    """The scored test rows, the baselines' forecasts of them, and the mask of the rows every
    baseline can forecast: every method, point or interval, is scored on those alone."""
    test = preds[(preds["split"] == "test") & (preds["step"] >= scored_from)]
    baselines = baseline_predictions(test, frame, mode, season)
    usable = np.ones(len(test), dtype=bool)
    for values in baselines.values():
        usable &= ~np.isnan(values)
    return test, baselines, usable


def metrics_with_baselines(preds: pd.DataFrame, frame: pd.DataFrame, mode: str,
                           season: int | None = None, scored_from: int = 0,
                           task: str = "regression") -> dict[str, float]:
    """The final test metrics ForecastModule does not log (those are LOGGED_PER_EPOCH[task]).

    Regression: test/mape (strictly positive targets), then per baseline (persistence, and
    seasonal_naive when `season` is set; forecast mode only) test/<baseline>_<mse|mae|rmse|mape>
    and MASE = model MAE / baseline MAE as test/mase (persistence) and test/mase_seasonal_naive.
    Every method is scored on exactly the same test targets. With persistence, also
    test/directional_accuracy and test/up_share (see directional_scores). Classification:
    nothing (no label baselines yet; the module logs accuracy, log_loss and exact_match).
    """
    if task == "classification":
        return {}
    test, baselines, usable = scored_test(preds, frame, mode, season, scored_from)
    y_true = test["y_true"].to_numpy()[usable]
    model = score(y_true, test["y_pred"].to_numpy()[usable], task)
    metrics = {f"test/{k}": v for k, v in model.items() if k not in LOGGED_PER_EPOCH[task]}
    for name, values in baselines.items():
        base = score(y_true, values[usable])
        metrics.update({f"test/{name}_{k}": v for k, v in base.items()})
        ratio_name = "test/mase" if name == "persistence" else f"test/mase_{name}"
        metrics[ratio_name] = model["mae"] / base["mae"] if base["mae"] > 0 else float("inf")
    if "persistence" in baselines:
        metrics.update(directional_scores(y_true, test["y_pred"].to_numpy()[usable],
                                          baselines["persistence"][usable]))
    return metrics


def directional_scores(y_true: np.ndarray, y_pred: np.ndarray, last: np.ndarray) -> dict[str, float]:
    """Did the forecast get the sign of the move from the last observed value right?

    test/directional_accuracy: the share of targets whose forecast moves the same way as the
    truth, over the targets that moved (an unchanged close, e.g. a suspended day, has no sign).
    test/up_share: the share of those that went up, the reference: a constant "up" scores it,
    a constant "down" 1 - it, a coin 0.5. Both NaN when nothing moved.
    """
    moved = y_true != last
    if not moved.any():
        return {"test/directional_accuracy": float("nan"), "test/up_share": float("nan")}
    truth = np.sign(y_true[moved] - last[moved])
    guess = np.sign(y_pred[moved] - last[moved])
    return {"test/directional_accuracy": float(np.mean(guess == truth)),
            "test/up_share": float(np.mean(truth > 0))}


# --- intervals (model.head != point) --------------------------------------------------------------


def probabilistic_metrics(net: Forecaster, prepared: PreparedData, scored_from: int = 0,
                          season: int | None = None,
                          preds: pd.DataFrame | None = None) -> dict[str, float]:
    """The interval metrics of a non-point head on the raw test split, on exactly the windows
    metrics_with_baselines scores (empty for a point head or classification):

    - test/coverage_<p>, test/width_<p> per symmetric level pair (80 for 0.1/0.9),
      test/pinball_q<level>, test/crps (quantile head: 2 x mean pinball over its levels;
      gaussian: closed form; student_t: numerically), test/coverage_error;
    - test/persistence_*: the same for persistence with intervals from the empirical quantiles
      of its training-split residuals per horizon step and target (forecast mode), and
      test/relative_crps = crps / persistence_crps. Persistence's CRPS is read at the model's
      levels for a quantile head and on a dense level grid otherwise, as the model's is;
    - test/conformal_coverage_<p>, test/conformal_width_<p>, test/conformal_coverage_error:
      each interval widened (or narrowed) by the split-conformal offset of the validation split,
      per horizon step and target.

    `preds` is predictions_frame(net, prepared) when the caller has it already.
    """
    if net.spec.task != "regression" or not net.levels:
        return {}
    preds = predictions_frame(net, prepared) if preds is None else preds
    test, baselines, usable = scored_test(preds, prepared.frame, prepared.spec.mode, season,
                                          scored_from)
    test = test[usable]
    levels = list(net.levels)
    columns = [intervals.quantile_column(q) for q in levels]
    y = test["y_true"].to_numpy()
    quantiles = test[columns].to_numpy(dtype=np.float64)
    metrics = _prefixed("test/", intervals.interval_scores(y, quantiles, levels, model_crps(test)))
    if "persistence" in baselines:
        metrics.update(_persistence_metrics(prepared, test, baselines["persistence"][usable],
                                            levels, dense=net.spec.head != "quantile"))
        if metrics.get("test/persistence_crps", 0) > 0:
            metrics["test/relative_crps"] = metrics["test/crps"] / metrics["test/persistence_crps"]
    validation = preds[(preds["split"] == "val") & (preds["step"] >= scored_from)]
    metrics.update(_conformal_metrics(validation, test, levels))
    return metrics


def _prefixed(prefix: str, scores: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in scores.items()}


def model_crps(rows: pd.DataFrame) -> np.ndarray | None:
    """Per-row CRPS from the head's own distribution; None: from the quantile columns."""
    y = rows["y_true"].to_numpy()
    if "y_df" in rows:
        return intervals.crps_student_t(y, rows["y_mu"].to_numpy(), rows["y_sigma"].to_numpy(),
                                        rows["y_df"].to_numpy())
    if "y_sigma" in rows:
        return intervals.crps_gaussian(y, rows["y_mu"].to_numpy(), rows["y_sigma"].to_numpy())
    return None


def _group_keys(rows: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([rows["step"].to_numpy(), rows["target"].to_numpy()])


def _persistence_metrics(prepared: PreparedData, test: pd.DataFrame, point: np.ndarray,
                         levels: list[float], dense: bool) -> dict[str, float]:
    """Persistence + the quantiles of its training residuals of the same (step, target)."""
    train = window_rows(prepared.windows["train"], prepared, "train")
    residual = train["y_true"].to_numpy() - naive_forecasts(train, prepared.frame, lambda h: h)
    # The interval levels first; a dense grid after them when the CRPS must match a model's exact one.
    grid = [*levels, *(DENSE_LEVELS if dense else ())]
    by_group = {key: intervals.empirical_quantiles(residual[index], grid)
                for key, index in train.groupby(["step", "target"]).indices.items()}
    nan = np.full(len(grid), np.nan)
    offsets = np.stack([by_group.get(key, nan) for key in _group_keys(test)]) if len(test) else \
        np.empty((0, len(grid)))
    quantiles = point[:, None] + offsets
    y = test["y_true"].to_numpy()
    at_levels = quantiles[:, :len(levels)]
    crps = intervals.crps_from_quantiles(y, quantiles[:, len(levels):], DENSE_LEVELS) if dense else None
    return _prefixed("test/persistence_", intervals.interval_scores(y, at_levels, levels, crps))


def _conformal_metrics(validation: pd.DataFrame, test: pd.DataFrame,
                       levels: list[float]) -> dict[str, float]:
    """Split conformal: each pair's offset from the validation rows of the same (step, target)."""
    if validation.empty or test.empty:
        return {}
    offsets = {}
    keys = _group_keys(test)
    for lo, hi in intervals.symmetric_pairs(levels):
        lower, upper = intervals.quantile_column(lo), intervals.quantile_column(hi)
        by_group = {key: intervals.conformal_offset(part["y_true"].to_numpy(), part[lower].to_numpy(),
                                                    part[upper].to_numpy(), hi - lo)
                    for key, part in validation.groupby(["step", "target"])}
        offsets[(lo, hi)] = np.array([by_group.get(key, 0.0) for key in keys])
    columns = [intervals.quantile_column(q) for q in levels]
    scores = intervals.conformal_scores(test["y_true"].to_numpy(), test[columns].to_numpy(np.float64),
                                        levels, offsets)
    return _prefixed("test/conformal_", scores)


def interval_scores_on_windows(net: Forecaster, x_raw: np.ndarray, y_raw: np.ndarray,
                               scored_from: int = 0,
                               series: torch.Tensor | None = None) -> dict[str, float]:
    """Interval scores (crps, coverage_error, coverage_<p>, width_<p>, pinball_q<level>) of `net`
    on raw windows x (W, lookback, inputs) against raw truth y (W, steps, targets), steps before
    `scored_from` left out: what ranking on crps or coverage_error reads (empty for a point
    head, whose versions cannot be ranked on them)."""
    if net.spec.task != "regression" or not net.levels or len(x_raw) == 0:
        return {}
    x = torch.as_tensor(np.ascontiguousarray(x_raw), dtype=torch.float32, device=net.x_center.device)
    x_scaled = net.scale_x(x, series).cpu().numpy()
    columns = predict_distribution(net, x_scaled,
                                   series=None if series is None else series.cpu().numpy())
    rows = pd.DataFrame({name: values[:, scored_from:].reshape(-1) for name, values in columns.items()})
    rows["y_true"] = np.asarray(y_raw, dtype=np.float64)[:, scored_from:].reshape(-1)
    quantiles = rows[[intervals.quantile_column(q) for q in net.levels]].to_numpy(np.float64)
    return intervals.interval_scores(rows["y_true"].to_numpy(), quantiles, list(net.levels),
                                     model_crps(rows))
