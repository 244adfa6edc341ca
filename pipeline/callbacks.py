"""The Trainer's own callbacks (checkpoints, early stopping, progress bar), trimmed of per-step
costs.

Lightning calls every hook of every callback on every step and names each call after the
callback's `state_key` (trainer/call.py::_call_callback_hooks), which ModelCheckpoint and
EarlyStopping rebuild from their settings each time: repr() of a dict, about ten times a step per
callback. Their settings never change after construction, so the key is computed once here.
"""

from __future__ import annotations

import time
from functools import cached_property

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar


class _FixedStateKey:
    """Mixin: `state_key` computed once (the same string Lightning's own property gives)."""

    @cached_property
    def state_key(self) -> str:  # type: ignore[override]
        return super().state_key


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every `interval_s` seconds and at each loop's end.

    Lightning's bar refreshes its numbers and metrics on every batch (refresh_rate=1), a fixed
    cost of about 0.3 ms a step; a step count would redraw a slow model too rarely and a fast
    one too often, so the bar is throttled by time instead.
    """

    def __init__(self, interval_s: float = 0.25) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._drawn_at = float("-inf")

    def _should_update(self, current: int, total: int) -> bool:  # Lightning's own redraw test
        if not self.is_enabled:
            return False
        now = time.monotonic()
        if current == total or now - self._drawn_at >= self.interval_s:
            self._drawn_at = now
            return True
        return False


class BestCheckpoint(_FixedStateKey, ModelCheckpoint):
    """`best.ckpt`: the epoch with the lowest val/loss, written at the end of the training epoch
    (after validation), so a resumed run starts the next epoch instead of repeating this one's
    validation."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, filename="best", monitor="val/loss", mode="min",
                         save_top_k=1, save_on_train_epoch_end=True)


class EarlyStop(_FixedStateKey, EarlyStopping):
    def __init__(self, patience: int) -> None:
        super().__init__(monitor="val/loss", mode="min", patience=patience)


class LastCheckpoint(_FixedStateKey, ModelCheckpoint):
    """`last.ckpt`, written at the end of a training epoch at most every `every_s` seconds and
    always after the epoch that ends training (max_epochs reached, or early stopping).

    Written after validation, so a resumed run starts the next epoch instead of repeating this
    one's validation. A file of its own (not ModelCheckpoint's save_last, which only refreshes
    when the best checkpoint changes). On epochs of tens of milliseconds (the stock study: 22
    steps) two checkpoint writes an epoch cost a fifth of the training; a stopped run loses at
    most `every_s` of work instead.
    """

    def __init__(self, dirpath: str, every_s: float) -> None:
        super().__init__(dirpath=dirpath, filename="last", save_top_k=1,
                         save_on_train_epoch_end=True, enable_version_counter=False)
        self.every_s = every_s
        self._written_at: float | None = None

    def _due(self, trainer: L.Trainer) -> bool:
        final = trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        late = self._written_at is None or time.monotonic() - self._written_at >= self.every_s
        # Every rank must take the same branch: saving is a collective under DDP.
        return bool(trainer.strategy.broadcast(final or late))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Checkpoint callbacks run after every other callback, early stopping included, so
        # should_stop already says whether this epoch is the last.
        if self._due(trainer):
            super().on_train_epoch_end(trainer, pl_module)
            self._written_at = time.monotonic()


