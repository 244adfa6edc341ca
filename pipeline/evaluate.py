"""Evaluate stage: raw-scale predictions of every split, as one tidy frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.data.datamodule import PreparedData
from pipeline.data.windowing import SPLITS
from pipeline.models.network import Forecaster


def predict_windows(net: Forecaster, x_scaled: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Scaled windows -> raw-scale predictions (W, steps, targets)."""
    net.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(x_scaled), batch_size):
            # Windows are read-only strided views; copy each batch into a fresh tensor.
            batch = torch.tensor(x_scaled[start:start + batch_size], dtype=torch.float32,
                                 device=net.x_center.device)
            outputs.append(net.unscale_y(net(batch)).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.empty((0, net.spec.lookback, len(net.spec.targets)))


def predictions_frame(net: Forecaster, prepared: PreparedData, splits=SPLITS) -> pd.DataFrame:
    """One row per (split, window, step, target): where it sits in time, truth and prediction."""
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
