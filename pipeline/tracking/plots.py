"""Plots people look at in the MLflow UI: the loss curve, forecast vs truth (with its intervals
shaded when the predictions carry quantiles) and the intervals' calibration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers, DDP workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.intervals import interval_label, quantile_columns, symmetric_pairs  # noqa: E402

_SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}


def plot_loss_curve(history: Mapping[str, Sequence[tuple[int, float]]], path: Path,
                    title: str = "") -> Path:
    """history: metric name -> [(epoch, value)], e.g. from MlflowClient.get_metric_history."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in history.items():
        if points:
            epochs, values = zip(*points, strict=True)
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (the head's, on scaled targets)")
    # A likelihood head's loss (a negative log-likelihood) may go below zero: no log axis then.
    values = [v for points in history.values() for _, v in points]
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(title or "training and validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_forecast(truth: pd.DataFrame, predictions: pd.DataFrame, index_name: str, path: Path,
                  title: str = "") -> Path:
    """Truth over the whole series; predictions coloured by split, split regions shaded; where
    `predictions` has quantile columns (y_q0.1, ...), each central interval is a band around
    them, the widest palest."""
    targets = list(predictions["target"].unique())
    bands = _bands(predictions)
    fig, axes = plt.subplots(len(targets), 1, figsize=(10, 3.2 * len(targets)), squeeze=False)
    for ax, target in zip(axes[:, 0], targets, strict=True):
        ax.plot(truth.index, truth[target], color="black", linewidth=1.0, label=f"{target} (truth)")
        for split, part in predictions[predictions["target"] == target].groupby("split", sort=False):
            color = _SPLIT_COLORS.get(split, "gray")
            ax.axvspan(part[index_name].min(), part[index_name].max(), color=color, alpha=0.07)
            for (lower, upper, label), alpha in zip(bands, _band_alphas(len(bands)), strict=True):
                ax.fill_between(part[index_name], part[lower], part[upper], color=color,
                                alpha=alpha, linewidth=0,
                                label=f"{split} {label}% interval" if split == "test" else None)
            ax.plot(part[index_name], part["y_pred"], color=color, linewidth=1.2,
                    linestyle="--", label=f"{split} prediction")
        ax.set_ylabel(target)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel(index_name)
    axes[0, 0].set_title(title or "forecast vs truth")
    return _save(fig, path)


def _bands(predictions: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(lower column, upper column, nominal %) per central interval, widest first."""
    columns = quantile_columns(predictions)
    return [(columns[lo], columns[hi], interval_label(lo, hi))
            for lo, hi in symmetric_pairs(list(columns))]


def _band_alphas(count: int) -> list[float]:
    # Nested bands add up: the widest palest, the core about three times as dark.
    return [0.12 + 0.1 * i / max(count - 1, 1) for i in range(count)]


def plot_calibration(curves: Mapping[str, Mapping[float, float]], path: Path,
                     title: str = "") -> Path:
    """Nominal vs observed coverage of each central interval, per method (e.g. from
    pipeline.intervals.calibration_curves: model, persistence, conformal), against the diagonal
    a calibrated forecaster sits on."""
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1.0, label="calibrated")
    for (method, points), marker in zip(curves.items(), "osD^v", strict=False):
        nominal = sorted(points)
        ax.plot(nominal, [points[n] for n in nominal], marker=marker, label=method)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("observed coverage (test)")
    ax.set_title(title or "interval calibration")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- a universe (many series) ---------------------------------------------------------------------


def plot_mase_by_series(table: pd.DataFrame, path: Path, title: str = "") -> Path:
    """Histogram of per-series MASE (model MAE / persistence MAE): left of 1 beats persistence."""
    import numpy as np

    mase = table["mase"].replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(mase, bins=min(50, max(10, len(mase) // 10)), color="tab:blue", alpha=0.8)
    ax.axvline(1.0, color="black", linewidth=1.0, label="persistence (MASE = 1)")
    if len(mase):
        median = float(np.median(mase))
        ax.axvline(median, color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"median {median:.3f}")
        ax.set_xlabel(f"MASE per series ({(mase < 1).mean():.0%} of {len(mase)} beat persistence)")
    ax.set_ylabel("series")
    ax.set_title(title or "MASE by series")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_series_forecasts(history: pd.DataFrame, predictions: pd.DataFrame,
                          captions: Mapping[str, str], path: Path, title: str = "") -> Path:
    """One panel per series of `captions` (code -> caption): its truth (history: date, series,
    the target) and its one-step test forecasts (predictions: date, series, y_pred), with each
    central interval shaded where the predictions carry quantiles (y_q0.1, ...)."""
    codes = list(captions)
    bands = _bands(predictions)
    target = str(predictions["target"].iloc[0]) if len(predictions) else ""
    fig, axes = plt.subplots(len(codes), 1, figsize=(10, 2.6 * len(codes)), squeeze=False)
    for ax, code in zip(axes[:, 0], codes, strict=True):
        truth = history[history["series"] == code]
        part = predictions[predictions["series"] == code]
        ax.plot(truth["date"], truth[target], color="black", linewidth=1.0, label="truth")
        if len(part):
            ax.axvspan(part["date"].min(), part["date"].max(), color=_SPLIT_COLORS["test"], alpha=0.07)
            for (lower, upper, label), alpha in zip(bands, _band_alphas(len(bands)), strict=True):
                ax.fill_between(part["date"], part[lower], part[upper], color=_SPLIT_COLORS["test"],
                                alpha=alpha, linewidth=0, label=f"{label}% interval")
            ax.plot(part["date"], part["y_pred"], color=_SPLIT_COLORS["test"], linewidth=1.2,
                    linestyle="--", label="test forecast")
        ax.set_ylabel(target)
        ax.set_title(f"{code}: {captions[code]}", fontsize="small", loc="left")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    axes[0, 0].set_title(title or "forecast vs truth", loc="right")
    return _save(fig, path)
