"""The Lightning callback between a training and its Optuna trial: each epoch's validation metric
is reported to the trial, the pruner is asked whether to go on, and a pruned training stops at
the end of that epoch.

Our own small callback rather than optuna-integration's PyTorchLightningPruningCallback: that one
raises TrialPruned from inside fit, which reaches the training's run guard as an error (the
child run would read FAILED), and it imports `lightning.pytorch` only through a version check
of its own. Here the training stops the way EarlyStopping stops it (`trainer.should_stop`), and
`abandon` tells pipeline.training to skip the test and the artifacts of a pruned trial.

Under DDP only global rank zero holds the trial (the others get None); its decision is
broadcast, so every rank stops after the same epoch.
"""

from __future__ import annotations

import math
import time

import lightning as L


class TrialReporter(L.Callback):
    def __init__(self, trial, monitor: str, direction: str) -> None:
        self.trial = trial  # an optuna.Trial on global rank zero, None elsewhere
        self.monitor = monitor
        self.minimize = direction == "minimize"
        self.best: float | None = None  # the best value over the epochs: the trial's value
        self.reported = 0
        self.pruned = False
        self.run_id: str | None = None  # the training's MLflow run (rank zero)
        # perf_counter stamps: where a trial's time goes outside fit (benchmarks/bench_sweep.py)
        self.created = time.perf_counter()
        self.fit_started: float | None = None
        self.fit_ended: float | None = None

    @property
    def abandon(self) -> bool:
        return self.pruned

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.run_id = getattr(trainer.logger, "run_id", None)
        self.fit_started = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_ended = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if self.trial is not None:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None:
                prune = self.report(float(value), trainer.current_epoch)
        # One decision for every rank: a rank that trains on alone waits forever in DDP.
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            self.pruned = True
            trainer.should_stop = True

    def report(self, value: float, epoch: int) -> bool:
        """Record the epoch's value; True when the pruner says to stop."""
        self.trial.report(value, step=epoch)
        self.reported += 1
        if not math.isnan(value):
            better = self.best is None or (value < self.best if self.minimize else value > self.best)
            self.best = value if better else self.best
        return self.trial.should_prune()
