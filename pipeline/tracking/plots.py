"""Plots people look at in the MLflow UI: the loss curve and forecast vs truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI, servers, DDP workers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

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
    ax.set_ylabel("loss (scaled MSE)")
    ax.set_yscale("log")
    ax.set_title(title or "training and validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_forecast(truth: pd.DataFrame, predictions: pd.DataFrame, index_name: str, path: Path,
                  title: str = "") -> Path:
    """Truth over the whole series; predictions coloured by split, split regions shaded."""
    targets = list(predictions["target"].unique())
    fig, axes = plt.subplots(len(targets), 1, figsize=(10, 3.2 * len(targets)), squeeze=False)
    for ax, target in zip(axes[:, 0], targets, strict=True):
        ax.plot(truth.index, truth[target], color="black", linewidth=1.0, label=f"{target} (truth)")
        for split, part in predictions[predictions["target"] == target].groupby("split", sort=False):
            color = _SPLIT_COLORS.get(split, "gray")
            ax.axvspan(part[index_name].min(), part[index_name].max(), color=color, alpha=0.07)
            ax.plot(part[index_name], part["y_pred"], color=color, linewidth=1.2,
                    linestyle="--", label=f"{split} prediction")
        ax.set_ylabel(target)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel(index_name)
    axes[0, 0].set_title(title or "forecast vs truth")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
