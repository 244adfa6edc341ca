"""The one LightningModule every variant trains through."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection

from pipeline.errors import require
from pipeline.models.network import Forecaster, NetworkSpec


def regression_metrics(prefix: str) -> MetricCollection:
    return MetricCollection(
        {"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "rmse": MeanSquaredError(squared=False)},
        prefix=prefix,
    )


class ForecastModule(L.LightningModule):
    """Loss on scaled targets (well conditioned); metrics on raw-scale targets (what users read).

    `loss_from_step` skips the first steps of many-to-many windows, where the model has not yet
    seen enough context (e.g. sin(t) alone cannot tell the sign of cos(t)).
    """

    def __init__(self, network: dict, lr: float = 1e-2, weight_decay: float = 0.0,
                 loss_from_step: int = 0) -> None:
        super().__init__()
        require(isinstance(lr, int | float) and lr > 0, "optim.lr", lr, "must be positive")
        require(isinstance(weight_decay, int | float) and weight_decay >= 0, "optim.weight_decay",
                weight_decay, "must be >= 0")
        # Plain dicts/numbers only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters()
        spec = NetworkSpec.from_dict(network)
        require(isinstance(loss_from_step, int) and 0 <= loss_from_step < _target_steps(spec),
                "data.burn_in", loss_from_step, "must be >= 0 and shorter than the target window")
        self.net = Forecaster(spec)
        self.loss_fn = nn.MSELoss()
        self.val_metrics = regression_metrics("val/")
        self.test_metrics = regression_metrics("test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _scored(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        start = self.hparams.loss_from_step
        return self(x)[:, start:], y[:, start:]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pred, y = self._scored(batch)
        loss = self.loss_fn(pred, y)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y),
                 sync_dist=True)
        return loss

    def _evaluate(self, batch, stage: str, metrics: MetricCollection) -> None:
        pred, y = self._scored(batch)
        self.log(f"{stage}/loss", self.loss_fn(pred, y), on_step=False, on_epoch=True,
                 prog_bar=True, batch_size=len(y), sync_dist=True)
        metrics.update(self.net.unscale_y(pred).reshape(-1), self.net.unscale_y(y).reshape(-1))
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(y))

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)


def _target_steps(spec: NetworkSpec) -> int:
    return spec.lookback if spec.mode == "sequence" else spec.horizon
