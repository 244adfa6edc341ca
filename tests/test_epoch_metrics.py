"""The module's losses and metrics are accumulated per epoch (no per-step logging): they must be
the exact means over every window of the epoch, visible to callbacks when Lightning's own were."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers.logger import Logger

from pipeline.cli import load_config
from pipeline.data.datamodule import SeriesDataModule, build_datamodule
from pipeline.training import build_module

# 300 points, lookback 16: 165 training windows (batches of 32: the last one holds 5)
SMALL = ["data.params.points=300", "data.lookback=16", "model.hidden_size=8"]


class Seen(L.Callback):
    """What a plain (non-monitoring) callback sees at each training epoch's end, and the
    per-batch training losses and batch sizes it would have to average by hand."""

    def __init__(self) -> None:
        self.epoch_loss: list[float] = []
        self.batches: list[list[tuple[float, int]]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.batches.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches[-1].append((float(outputs["loss"]), len(batch[0])))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_loss.append(float(trainer.callback_metrics["train/loss"]))


class Recording(Logger):
    """What a logger (MLflow's, in the pipeline) is sent: (step, metric names) per call."""

    name, version = "recording", "0"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, list[str]]] = []

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((step, sorted(metrics)))


def _setup(batch_size: int = 32):
    cfg = load_config("train", SMALL)
    L.seed_everything(0, verbose=False)
    prepared = build_datamodule(cfg.data).prepared
    return SeriesDataModule(prepared, batch_size=batch_size, eval_batch_size=20), \
        build_module(cfg, prepared)


def _trainer(epochs: int, callbacks=(), logger=False) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=epochs, logger=logger, callbacks=list(callbacks),
                     enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False)


def _by_hand(module, dm: SeriesDataModule, split: str) -> dict[str, float]:
    """Scaled-target loss and raw-scale MSE/MAE over every window of a split, in one pass."""
    windows = dm.prepared.windows[split]
    x = torch.tensor(windows.x, dtype=torch.float32)
    y = torch.tensor(windows.y, dtype=torch.float32)
    start = module.hparams.loss_from_step
    module.eval()
    with torch.no_grad():
        pred = module.net(x)[:, start:]
    y = y[:, start:]
    raw_pred, raw_y = module.net.to_output(pred), module.net.unscale_y(y)
    return {"loss": float(((pred - y) ** 2).mean()), "mse": float(((raw_pred - raw_y) ** 2).mean()),
            "mae": float((raw_pred - raw_y).abs().mean())}


def test_train_loss_is_the_window_weighted_epoch_mean_seen_by_callbacks_every_epoch() -> None:
    dm, module = _setup()
    seen = Seen()
    _trainer(3, [seen]).fit(module, datamodule=dm)
    assert len(seen.epoch_loss) == 3  # the first epoch included: logged before callbacks look
    assert [n for _, n in seen.batches[0]][-1] == len(dm.prepared.windows["train"]) % 32
    for logged, batches in zip(seen.epoch_loss, seen.batches, strict=True):
        expected = sum(loss * n for loss, n in batches) / sum(n for _, n in batches)
        assert logged == pytest.approx(expected, rel=1e-6)
    assert seen.epoch_loss[-1] < seen.epoch_loss[0]


@pytest.mark.parametrize("stage", ["val", "test"])
def test_evaluation_loss_and_metrics_cover_every_window_once(stage) -> None:
    dm, module = _setup()
    # one epoch after a sanity check: the sanity batches must not be in the epoch's figures
    _trainer(1).fit(module, datamodule=dm)
    trainer = _trainer(1)
    run = trainer.validate if stage == "val" else trainer.test
    logged = run(module, datamodule=dm, verbose=False)[0]
    expected = _by_hand(module, dm, stage)
    assert len(dm.prepared.windows[stage]) % 20 != 0  # a partial last batch is weighted right
    for name, value in expected.items():
        assert logged[f"{stage}/{name}"] == pytest.approx(value, rel=1e-5)
    assert logged[f"{stage}/rmse"] == pytest.approx(expected["mse"] ** 0.5, rel=1e-5)


def test_validation_after_the_sanity_check_reports_the_epoch_alone() -> None:
    dm, module = _setup()
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, num_sanity_val_steps=2,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_train_batches=2)
    trainer.fit(module, datamodule=dm)
    # validation ran at the end of the epoch with the final weights, over the whole split
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(
        _by_hand(module, dm, "val")["loss"], rel=1e-5)


def test_the_logger_gets_one_value_of_each_curve_per_epoch_at_the_epochs_last_step() -> None:
    """The MLflow curves: train/loss and the validation set once per epoch, at the global step
    that ends the epoch (however log_every_n_steps is set), never per step."""
    dm, module = _setup()
    logger = Recording()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=logger, log_every_n_steps=2,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    steps = -(-len(dm.prepared.windows["train"]) // 32)
    ends = [steps * (epoch + 1) - 1 for epoch in range(3)]
    with_train = [step for step, names in logger.calls if "train/loss" in names]
    with_val = [step for step, names in logger.calls if "val/loss" in names]
    assert with_train == with_val == ends
    assert all(names == ["epoch", "val/loss", "val/mae", "val/mse", "val/rmse"]
               for step, names in logger.calls if "val/loss" in names)
