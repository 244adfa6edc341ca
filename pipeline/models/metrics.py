"""The metric sets a task is scored with, as torchmetrics objects (training and test loops)
and the one log-loss formula the evaluate stage shares with them."""

from __future__ import annotations

import torch
from torchmetrics import MeanAbsoluteError, MeanSquaredError, Metric, MetricCollection
from torchmetrics.classification import BinaryAccuracy, MultilabelExactMatch
from torchmetrics.functional.classification import binary_accuracy, multilabel_exact_match

# What the collections below log as {val,test}/<name>; pipeline.evaluate scores the rest.
LOGGED_PER_EPOCH = {
    "regression": ("mse", "mae", "rmse"),
    "classification": ("accuracy", "log_loss", "exact_match"),
}


def binary_log_loss(probs: torch.Tensor, target: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of probabilities against 0/1 targets, any (matching) shape.

    Each log term is clamped at -100, as torch's binary_cross_entropy does, so a confident wrong
    answer costs 100, not infinity. Written out because CUDA autocast (16-mixed) refuses
    F.binary_cross_entropy.
    """
    target = target.to(probs.dtype)
    log_p, log_not_p = probs.log().clamp(min=-100), (1 - probs).log().clamp(min=-100)
    losses = -(target * log_p + (1 - target) * log_not_p)
    return losses.sum() if reduction == "sum" else losses.mean()


def exact_match(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose every label is right; probs and 0/1 target (samples, labels)."""
    if probs.shape[1] == 1:
        # torchmetrics' multilabel metrics need two labels or more; with one, a sample is
        # exactly right when its label is, which is accuracy.
        return binary_accuracy(probs, target)
    return multilabel_exact_match(probs, target, num_labels=probs.shape[1])


def _exact_match_metric(labels_per_sample: int) -> Metric:
    if labels_per_sample == 1:
        return BinaryAccuracy()  # see exact_match()
    return MultilabelExactMatch(num_labels=labels_per_sample)


class BinaryLogLoss(Metric):
    """Mean binary_log_loss over every label seen (torchmetrics ships no log-loss metric)."""

    is_differentiable = True
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.total += binary_log_loss(probs.float(), target, reduction="sum")
        self.count += target.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def regression_metrics(prefix: str) -> MetricCollection:
    """mse, mae, rmse; updated with flat raw-scale predictions and targets."""
    return MetricCollection(
        {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(),
         "rmse": MeanSquaredError(squared=False)},
        prefix=prefix,
    )


def classification_metrics(prefix: str, labels_per_sample: int) -> MetricCollection:
    """accuracy (per label), log_loss (per label) and exact_match (every label of a sample
    right, e.g. the whole sum); updated with probabilities and 0/1 targets, both
    (samples, labels_per_sample)."""
    return MetricCollection(
        {"accuracy": BinaryAccuracy(), "log_loss": BinaryLogLoss(),
         "exact_match": _exact_match_metric(labels_per_sample)},
        prefix=prefix,
    )
