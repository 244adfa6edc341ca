"""The one LightningModule every variant trains through."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.classification import BinaryAccuracy, MultilabelExactMatch

from pipeline.errors import require
from pipeline.models.network import Forecaster, NetworkSpec


def regression_metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)},
        prefix=prefix,
    )


def classification_metrics(prefix: str, labels_per_sample: int) -> MetricCollection:
    """Per-label accuracy and exact match (every bit of a sample right, e.g. the whole sum)."""
    return MetricCollection(
        {"accuracy": BinaryAccuracy(), "exact_match": MultilabelExactMatch(num_labels=labels_per_sample)},
        prefix=prefix,
    )


def _target_steps(spec: NetworkSpec) -> int:
    return spec.lookback if spec.mode == "sequence" else spec.horizon


class ForecastModule(L.LightningModule):
    """Loss on scaled targets (well conditioned); metrics on raw-scale targets (what users read).

    `loss_from_step` skips the first steps of many-to-many windows, where the model has not yet
    seen enough context (e.g. sin(t) alone cannot tell the sign of cos(t)).
    `teacher_forcing` (seq2seq, training only) and `recurrent_l2` (a penalty on hidden-to-hidden
    weights, as in the SST encoder-decoder study) shape training, not the network.
    """

    def __init__(self, network: dict, lr: float = 1e-2, weight_decay: float = 0.0,
                 loss_from_step: int = 0, teacher_forcing: float = 0.0,
                 recurrent_l2: float = 0.0) -> None:
        super().__init__()
        require(isinstance(lr, int | float) and lr > 0, "optim.lr", lr, "must be positive")
        require(isinstance(weight_decay, int | float) and weight_decay >= 0, "optim.weight_decay",
                weight_decay, "must be >= 0")
        require(isinstance(teacher_forcing, int | float) and 0 <= teacher_forcing <= 1,
                "model.teacher_forcing", teacher_forcing, "must be in [0, 1]")
        require(isinstance(recurrent_l2, int | float) and recurrent_l2 >= 0, "model.recurrent_l2",
                recurrent_l2, "must be >= 0")
        # Plain dicts/numbers only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(logger=False)
        spec = NetworkSpec.from_dict(network)
        steps = _target_steps(spec)
        require(isinstance(loss_from_step, int) and 0 <= loss_from_step < steps,
                "data.burn_in", loss_from_step, "must be >= 0 and shorter than the target window")
        self.net = Forecaster(spec)
        self.classify = spec.task == "classification"
        self.loss_fn = nn.BCEWithLogitsLoss() if self.classify else nn.MSELoss()
        if self.classify:
            labels = (steps - loss_from_step) * len(spec.targets)
            self.val_metrics = classification_metrics("val/", labels)
            self.test_metrics = classification_metrics("test/", labels)
        else:
            self.val_metrics = regression_metrics("val/")
            self.test_metrics = regression_metrics("test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _scored(self, pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.hparams.loss_from_step
        return pred[:, start:], y[:, start:]

    def _recurrent_penalty(self) -> torch.Tensor | float:
        if not self.hparams.recurrent_l2:
            return 0.0
        squares = [p.pow(2).sum() for name, p in self.net.named_parameters() if "weight_hh" in name]
        return self.hparams.recurrent_l2 * torch.stack(squares).sum()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        pred, y = self._scored(self.net(x, teacher=y, teacher_forcing=self.hparams.teacher_forcing), y)
        loss = self.loss_fn(pred, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        return loss + self._recurrent_penalty()

    def _evaluate(self, batch, stage: str, metrics: MetricCollection) -> None:
        x, y = batch
        pred, y = self._scored(self.net(x), y)  # no teacher: autoregressive where it applies
        self.log(f"{stage}/loss", self.loss_fn(pred, y), on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=len(y), sync_dist=True)
        if self.classify:
            metrics.update(torch.sigmoid(pred).reshape(len(y), -1), y.reshape(len(y), -1).int())
        else:
            metrics.update(self.net.to_output(pred).reshape(-1), self.net.unscale_y(y).reshape(-1))
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(y))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
