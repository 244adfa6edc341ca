"""The one LightningModule every variant trains through."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from pipeline.models.metrics import classification_metrics, regression_metrics
from pipeline.models.network import Forecaster, NetworkSpec


def _target_steps(spec: NetworkSpec) -> int:
    return spec.lookback if spec.mode == "sequence" else spec.horizon


def _loss_function(net: Forecaster, classify: bool):
    """(prediction, scaled truth) -> scalar loss, for the network's task and head."""
    if classify:
        return nn.BCEWithLogitsLoss()
    if net.distribution.is_point:
        return nn.MSELoss()
    return net.distribution.loss  # pinball or NLL over the head's parameters


def unpack(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(x, y) from one series, (x, y, series ids) from a universe -> x, y, ids or None."""
    if len(batch) == 3:
        return batch
    x, y = batch
    return x, y, None


class EpochLoss:
    """A loss's mean over an epoch's windows, kept as a running tensor sum: a step adds to it and
    never waits for a value. Lightning's self.log does Python work on every call (about 0.4 ms
    on a 2-core CPU, a sixth of the default model's step), so the module logs once per epoch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, loss: torch.Tensor, windows: int) -> None:
        weighted = loss.detach().float() * windows  # float32 sums, whatever the precision
        self.total = weighted if self.total is None else self.total + weighted
        self.count += windows

    def take(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum, count) as float tensors on `device`, and a fresh start."""
        total = self.total if self.total is not None else torch.zeros((), device=device)
        count = torch.tensor(float(self.count), device=device)
        self.reset()
        return total.to(device), count


class ForecastModule(L.LightningModule):
    """Loss on scaled targets (well conditioned); metrics on raw-scale targets (what users read).

    The loss is the head's: MSE (point), pinball (quantile), negative log-likelihood (gaussian,
    student_t), BCE with logits (classification); {train,val,test}/loss log it. The metrics read
    the point forecast (a distribution head's median), so they compare across heads.

    Logs train/loss, and per epoch {val,test}/loss with the task's metrics:
    regression mse, mae, rmse; classification accuracy, log_loss, exact_match.
    Values are not range-checked here: pipeline.config checks the config they come from.

    Args:
        network: NetworkSpec.to_dict(); plain values, so checkpoints load with
            torch.load(weights_only=True).
        lr: Adam learning rate.
        weight_decay: Adam weight decay (L2 on every parameter).
        loss_from_step: target steps skipped by loss and metrics; many-to-many windows start
            before the model has seen enough context (sin(t) alone cannot tell the sign of
            cos(t)). Must be shorter than the target window.
        teacher_forcing: seq2seq, training only: probability of feeding the decoder the true
            previous value instead of its own prediction.
        recurrent_l2: L2 penalty on hidden-to-hidden weights (as in the SST encoder-decoder
            study), added to the training loss but not logged in train/loss.
        gradient_clip_val: clip the gradients' global norm to this before each step (None: no
            clipping). The module steps its optimizer itself (see training_step), so the clipping
            is its own and the Trainer gets none.
    """

    def __init__(self, network: dict, lr: float = 1e-2, weight_decay: float = 0.0,
                 loss_from_step: int = 0, teacher_forcing: float = 0.0,
                 recurrent_l2: float = 0.0, gradient_clip_val: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        # Manual optimization: one backward and one step per batch, as Lightning's automatic loop
        # would do, without its per-step closure machinery (about 0.4 ms a step on a 2-core CPU,
        # a sixth of the default model's step: benchmarks/bench_training.py). Lightning still
        # counts global steps, runs the precision plugin and DDP's gradient sync, and calls
        # on_before_optimizer_step for callbacks and for the clipping below.
        self.automatic_optimization = False
        spec = NetworkSpec.from_dict(network)
        self.net = Forecaster(spec)
        self.classify = spec.task == "classification"
        self.loss_fn = _loss_function(self.net, self.classify)
        if self.classify:
            labels = (_target_steps(spec) - loss_from_step) * len(spec.targets)
            self.val_metrics = classification_metrics("val/", labels)
            self.test_metrics = classification_metrics("test/", labels)
        else:
            self.val_metrics = regression_metrics("val/")
            self.test_metrics = regression_metrics("test/")
        # Plain attributes, not state: losses are logged per epoch and never checkpointed.
        self._epoch_loss = {stage: EpochLoss() for stage in ("train", "val", "test")}

    def __setattr__(self, name: str, value) -> None:
        # Lightning records the running hook in `_current_fx_name` about 30 times a step;
        # nn.Module.__setattr__ looks for parameters, buffers and submodules each time. A hook's
        # name (a str or None) is none of those, so it is stored as a plain attribute.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor, series: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x, series=series)

    def _scored(self, pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (batch, steps, targets) -> (batch, steps - loss_from_step, targets)
        start = self.hparams.loss_from_step
        return pred[:, start:], y[:, start:]

    def _recurrent_penalty(self) -> torch.Tensor | float:
        if not self.hparams.recurrent_l2:
            return 0.0
        squares = [p.pow(2).sum() for name, p in self.net.named_parameters() if "weight_hh" in name]
        return self.hparams.recurrent_l2 * torch.stack(squares).sum()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, series = unpack(batch)
        pred, y = self._scored(self.net(x, teacher=y, teacher_forcing=self.hparams.teacher_forcing,
                                        series=series), y)
        loss = self.loss_fn(pred, y)
        self._epoch_loss["train"].add(loss, len(y))
        if self.trainer.is_last_batch:
            # Logged at the epoch's last step, not in on_train_epoch_end: callbacks read
            # callback_metrics in their own on_train_epoch_end, which runs before the module's.
            self._log_epoch_loss("train")
        self._step(loss + self._recurrent_penalty())
        return loss

    def _step(self, loss: torch.Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Called inside optimizer.step() after backward and, under mixed precision, after the
        # gradients are unscaled: the right place to clip them, as Lightning's own loop does.
        if self.hparams.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        self._log_epoch_loss("train")  # an epoch cut short (max_steps, a limit): what it saw

    def _evaluate(self, batch, stage: str, metrics: MetricCollection) -> None:
        x, y, series = unpack(batch)
        # No teacher: autoregressive where it applies.
        pred, y = self._scored(self.net(x, series=series), y)
        self._epoch_loss[stage].add(self.loss_fn(pred, y), len(y))
        if self.classify:
            # (batch, steps, targets) -> (batch, labels): exact_match needs the sample axis
            metrics.update(torch.sigmoid(pred).reshape(len(y), -1), y.reshape(len(y), -1).int())
        else:
            metrics.update(self.net.to_output(pred, x, series).reshape(-1),
                           self.net.unscale_y(y, x, series).reshape(-1))

    def _start_evaluation(self, stage: str, metrics: MetricCollection) -> None:
        # Each epoch's end empties both; a loop stopped half-way (an error, Ctrl-C in
        # trainer.validate) must not leave its windows in the next one's figures.
        self._epoch_loss[stage].reset()
        metrics.reset()

    def _log_epoch_metrics(self, stage: str, metrics: MetricCollection) -> None:
        if self._log_epoch_loss(stage):
            # torchmetrics syncs the states across ranks itself in compute()
            self.log_dict(metrics.compute(), sync_dist=self._distributed())
        metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test", self.test_metrics)

    def _log_epoch_loss(self, stage: str) -> bool:
        """Logs `<stage>/loss`, the mean over every window of the epoch on every rank; False
        when no window was seen (or it was logged already)."""
        total, count = self._epoch_loss[stage].take(self.device)
        # One collective per epoch (a no-op in one process) where sync_dist paid one per step.
        total, count = self.trainer.strategy.reduce(torch.stack([total, count]), reduce_op="sum")
        if count == 0:
            return False
        # on_epoch explicitly: from training_step Lightning would default to a per-step value,
        # which the logger only sees every log_every_n_steps.
        self.log(f"{stage}/loss", total / count, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=1, sync_dist=self._distributed())
        return True

    def _distributed(self) -> bool:
        # Epoch values are global already; under DDP, sync_dist averages equal values (one small
        # collective per key and epoch) and spares Lightning's warning that they were not synced.
        return self.trainer.world_size > 1

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr,
                                weight_decay=self.hparams.weight_decay)
