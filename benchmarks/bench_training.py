"""Training-loop speed: the pipeline's fit against a plain PyTorch loop on the same windows.

Usage: python benchmarks/bench_training.py [--runs 3] [--sizes sine,stock,large] [--threads N]
                                           [--ablations] [--device cpu|cuda]
                                           [--precision 32-true|bf16-mixed] [--out DIR]

Rows, at each size (same process, same windows, same network and initial weights, Adam, gradient
clipping as the trainer config says, a validation pass over the validation windows each epoch):

* ``plain PyTorch``: a hand-written loop: randperm, a gather per batch, forward, loss, backward,
  clip, step; then the validation loss under inference_mode, in the evaluation batches the
  pipeline's DataModule serves (``eval_batch_size``). The baseline of every ratio.
* ``bare Lightning``: a LightningModule with only training_step/validation_step (no logging,
  metrics, logger, checkpoints, progress bar or summary) over the pipeline's own DataModule: what
  driving the loop through Lightning costs by itself.
* ``pipeline``: the real chain, built as ``pipeline.training`` builds it: ``load_config("train")``,
  ``build_datamodule``, ``build_module``, a tracked MLflow run in a temporary sqlite store
  (``start_tracking``), the buffered logger, the checkpoint mirror, ``WeightsAgreement`` and
  ``build_trainer`` with the config's callbacks (two ModelCheckpoints, EarlyStopping) and
  settings (progress bar and all).
* with ``--ablations``, the pipeline again with one part removed at a time (no progress bar; no
  tracking: no logger and no mirror), to show what each part costs.

How it is timed. Each row's fit runs in a thread of its own and the rows take turns one epoch at
a time (only the row holding the turn runs), so a change of load from other processes falls on
every row alike. An epoch runs from one ``on_train_epoch_start`` to the next (the last ends at
``on_train_end``): training steps, validation, checkpoint writes, and the mirror's upload of the
previous epoch's checkpoint. The first ``WARMUP_EPOCHS`` are dropped. A row's ratio in a run is the
median over epochs of its epoch time over the plain loop's epoch of the same turn; the whole
measurement is repeated ``--runs`` times, and the tables give the median over runs and the
min-max range. Process CPU seconds are recorded beside wall seconds.

Torch runs with its default threads (as the pipeline does) unless ``--threads`` says otherwise: on
a machine shared with other jobs, two intra-op threads on two cores stall each other (an H128
step went from 0.09 s to 2.6 s of CPU), so measure there with ``--threads 1``.

On ``--device cuda`` every row trains on the GPU (the pipeline with ``trainer.accelerator=gpu``);
each row moves a batch to the GPU as it uses it (the pipeline's DataModule serves CPU windows,
as a DataLoader would), and bf16 runs the plain loop under ``torch.autocast``. Epoch times end with
a ``torch.cuda.synchronize()``.

Results go to ``<out>/training_loop_<device>.json`` and ``.md``; ``--out`` defaults to ``.bench/`` at the
repository root (ignored by git). Pass ``--out benchmarks/results`` to update the recorded results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from pipeline.cli import load_config
from pipeline.config import TrainConfig, as_dict
from pipeline.data.datamodule import SeriesDataModule, WindowTensors, build_datamodule
from pipeline.distributed import WeightsAgreement
from pipeline.models.module import ForecastModule
from pipeline.tracking.checkpoints import MlflowCheckpointMirror, checkpoint_directory
from pipeline.tracking.logger import BufferedMLFlowLogger
from pipeline.tracking.run import run_guard
from pipeline.tracking.store import open_store
from pipeline.training import build_module, build_trainer, start_tracking

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / ".bench"
WARMUP_EPOCHS = 1
BASELINE = "plain PyTorch"
TARGET = {"sine": 1.15, "stock": 1.15, "large": 1.05}  # issue 13: pipeline / plain at most


@dataclass(frozen=True)
class Device:
    """Where every row trains: `name` is torch's device, `precision` Lightning's setting."""

    name: str = "cpu"
    precision: str = "32-true"

    @property
    def accelerator(self) -> str:
        return "gpu" if self.name == "cuda" else "cpu"

    def overrides(self) -> list[str]:
        return [f"trainer.accelerator={self.accelerator}", f"trainer.precision={self.precision}"]

    def synchronize(self) -> None:
        if self.name == "cuda":
            torch.cuda.synchronize()  # kernels are asynchronous: an epoch ends when they do

    def autocast(self):
        bf16 = self.precision.startswith("bf16")
        return torch.autocast(device_type=self.name, dtype=torch.bfloat16, enabled=bf16)


DEVICE = Device()  # set once by main() from --device / --precision


@dataclass(frozen=True)
class Size:
    label: str
    overrides: tuple[str, ...]
    epochs: int  # timed epochs per fit, after the warm-up


SIZES = {
    # The default config on a longer sine: LSTM H32, batch 32, lookback 40, 11,961 train windows.
    "sine": Size("default sine: LSTM H32, B32, T40", ("data.params.points=20000",), 8),
    # The stock study's shape (conf/experiment/stock_close.yaml) on ~1000 synthetic daily closes.
    "stock": Size("stock study: LSTM 2x H8, B32, T10", ("experiment=stock_close", "data=csv",
                                                        "data.inputs=[close]",
                                                        "data.targets=[close]"), 20),
    # A larger network on ~50k windows (30k of them for training).
    "large": Size("large: LSTM H128, B128, T64", ("data.params.points=50063", "data.lookback=64",
                                                  "model.hidden_size=128",
                                                  "data.batch_size=128"), 3),
}

Times = list[tuple[float, float]]  # (wall s, CPU s) per epoch


# --- turns: one row runs at a time, an epoch per turn ------------------------------------------


class Turns:
    """Round-robin turns between the rows' threads."""

    def __init__(self, rows: list[str]) -> None:
        self._active = list(rows)
        self._at = 0
        self._cv = threading.Condition()

    def _holder(self) -> str | None:
        return self._active[self._at] if self._active else None

    def wait(self, row: str) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._holder() == row)

    def pass_on(self, row: str) -> None:
        with self._cv:
            self._at = (self._active.index(row) + 1) % len(self._active)
            self._cv.notify_all()

    def leave(self, row: str) -> None:
        with self._cv:
            held = self._holder() == row
            index = self._active.index(row)
            self._active.remove(row)
            if self._active and (held or index < self._at):
                self._at = (index if held else self._at - 1) % len(self._active)
            self._cv.notify_all()


class EpochTimer:
    """One row's epochs, each timed from taking the turn to handing it on."""

    def __init__(self, turns: Turns, row: str) -> None:
        self.turns, self.row = turns, row
        self.epochs: Times = []
        self._start: tuple[float, float] | None = None

    def begin(self) -> None:
        self.turns.wait(self.row)
        DEVICE.synchronize()
        self._start = (time.perf_counter(), time.process_time())

    def end(self, hand_on: bool = True) -> None:
        if self._start is None:
            return
        DEVICE.synchronize()
        wall, cpu = self._start
        self.epochs.append((time.perf_counter() - wall, time.process_time() - cpu))
        self._start = None
        if hand_on:
            self.turns.pass_on(self.row)


class EpochTurns(L.Callback):
    """A Lightning fit's side of the turns. Callbacks listed before it run their
    on_train_epoch_start in the epoch that ends here (the mirror's upload of the checkpoint
    written at that epoch's end)."""

    def __init__(self, timer: EpochTimer) -> None:
        self.timer = timer

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.timer.end()
        self.timer.begin()

    def on_train_end(self, trainer, pl_module) -> None:
        self.timer.end(hand_on=False)  # the fit's teardown stays in this row's turn


# --- the loops -----------------------------------------------------------------------------------


def fresh_module(cfg: TrainConfig, dm: SeriesDataModule) -> ForecastModule:
    """The pipeline's module with the config seed's initial weights (the same in every row)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return build_module(cfg, dm.prepared)


def plain_loop(cfg: TrainConfig, dm: SeriesDataModule, epochs: int, timer: EpochTimer) -> None:
    module = fresh_module(cfg, dm).to(DEVICE.name)
    net, loss_fn, start = module.net, module.loss_fn, module.hparams.loss_from_step
    train, val = (WindowTensors(dm.prepared.windows[split]) for split in ("train", "val"))
    device = DEVICE.name
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr,
                                 weight_decay=cfg.optim.weight_decay)
    clip, batch = cfg.trainer.gradient_clip_val, cfg.data.batch_size
    eval_batch = dm.eval_batch_size  # the validation batches the pipeline's loaders serve
    for _ in range(epochs):
        timer.begin()
        net.train()
        for rows in torch.randperm(len(train)).split(batch):
            x, y = (t.index_select(0, rows).to(device) for t in (train.x, train.y))
            with DEVICE.autocast():
                pred = net(x, teacher=y, teacher_forcing=module.hparams.teacher_forcing)
                loss = loss_fn(pred[:, start:].float(), y[:, start:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            optimizer.step()
        net.eval()
        with torch.inference_mode(), DEVICE.autocast():
            total = sum(loss_fn(net(x.to(device))[:, start:].float(), y.to(device)[:, start:]) * len(x)
                        for x, y in zip(val.x.split(eval_batch), val.y.split(eval_batch),
                                        strict=True))
        float(total)  # the epoch's validation loss, as a number: the loop waits for it
        timer.end()


class BareModule(L.LightningModule):
    """The same network, loss and optimizer, and nothing else."""

    def __init__(self, module: ForecastModule, cfg: TrainConfig) -> None:
        super().__init__()
        self.net, self.loss_fn = module.net, module.loss_fn
        self.start, self.teacher_forcing = module.hparams.loss_from_step, module.hparams.teacher_forcing
        self.optim = cfg.optim

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        pred = self.net(x, teacher=y, teacher_forcing=self.teacher_forcing)
        return self.loss_fn(pred[:, self.start:], y[:, self.start:])

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self.net(x)[:, self.start:], y[:, self.start:])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.optim.lr,
                                weight_decay=self.optim.weight_decay)


def bare_lightning(cfg: TrainConfig, dm: SeriesDataModule, epochs: int, timer: EpochTimer) -> None:
    trainer = L.Trainer(accelerator=DEVICE.accelerator, devices=1, max_epochs=epochs,
                        precision=DEVICE.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=cfg.trainer.gradient_clip_val,
                        callbacks=[EpochTurns(timer)])
    trainer.fit(BareModule(fresh_module(cfg, dm), cfg), datamodule=dm)


def pipeline_fit(cfg: TrainConfig, dm: SeriesDataModule, epochs: int, timer: EpochTimer,
                 tracked: bool = True) -> None:
    """pipeline.training.train's fit, wired as fit_test_publish wires it, timed by turns."""
    cfg = replace(cfg, trainer=replace(cfg.trainer, max_epochs=epochs))
    module = fresh_module(cfg, dm)
    handle = None
    if tracked:
        store = open_store(cfg.tracking.uri, cfg.tracking.artifact_root)
        store.check()
        handle = start_tracking(store, cfg, dm.prepared, module.net.spec.label, as_dict(cfg), None)
    run_id = handle.run_id if handle else None
    with checkpoint_directory(cfg.trainer.checkpoint_dir, run_id) as ckpt_dir, \
            run_guard(handle, ckpt_dir):
        # logger=None would give Lightning's default CSVLogger: False is "no logger".
        logger = (BufferedMLFlowLogger(handle, flush_every_s=cfg.tracking.flush_every_s,
                                       spill_dir=ckpt_dir) if tracked else False)
        mirror = [MlflowCheckpointMirror(handle, ckpt_dir)] if tracked else []
        trainer = build_trainer(cfg.trainer, logger, ckpt_dir,
                                [*mirror, WeightsAgreement(), EpochTurns(timer)])
        trainer.fit(module, datamodule=dm, weights_only=True)


def _without_progress_bar(cfg: TrainConfig, dm: SeriesDataModule, epochs: int, timer: EpochTimer):
    pipeline_fit(replace(cfg, trainer=replace(cfg.trainer, progress_bar=False)), dm, epochs, timer)


def _untracked(cfg: TrainConfig, dm: SeriesDataModule, epochs: int, timer: EpochTimer):
    pipeline_fit(cfg, dm, epochs, timer, tracked=False)


Row = Callable[[TrainConfig, SeriesDataModule, int, EpochTimer], None]
ROWS: dict[str, Row] = {BASELINE: plain_loop, "bare Lightning": bare_lightning,
                        "pipeline": pipeline_fit}
ABLATIONS: dict[str, Row] = {"pipeline, no progress bar": _without_progress_bar,
                             "pipeline, no tracking": _untracked}


# --- one size, one run ---------------------------------------------------------------------------


def random_walk_closes(path: Path, days: int = 1000, seed: int = 0) -> Path:
    """~4 years of synthetic daily closes (a geometric random walk) in the csv source's layout."""
    rng = np.random.default_rng(seed)
    closes = 3000.0 * np.exp(np.cumsum(0.01 * rng.standard_normal(days)))
    dates = pd.bdate_range("2019-01-02", periods=days).strftime("%Y-%m-%d")
    pd.DataFrame({"date": dates, "close": closes}).to_csv(path, index=False)
    return path


def row_config(name: str, workdir: Path, row: str) -> TrainConfig:
    """The size's config; each row tracks into a store of its own (one thread per store)."""
    slug = "".join(c if c.isalnum() else "-" for c in row)
    overrides = [*SIZES[name].overrides, *DEVICE.overrides(),
                 f"tracking.uri=sqlite:///{workdir / slug}.db",
                 f"tracking.artifact_root={workdir / slug}-artifacts"]
    if name == "stock":
        closes = workdir / "closes.csv"
        if not closes.exists():
            random_walk_closes(closes)
        overrides.append(f"data.params.path={closes}")
    return load_config("train", overrides)


def measure_size(name: str, rows: dict[str, Row], workdir: Path) -> dict:
    size, names = SIZES[name], list(rows)
    turns = Turns(names)
    timers = {row: EpochTimer(turns, row) for row in names}
    errors: list[BaseException] = []
    shapes: dict[str, int] = {}

    def run_row(row: str) -> None:
        try:
            turns.wait(row)  # set-up in turn too: seeding and building never overlap
            cfg = row_config(name, workdir, row)
            dm = build_datamodule(cfg.data)
            shapes.update(train=len(dm.prepared.windows["train"]), batch=cfg.data.batch_size)
            rows[row](cfg, dm, WARMUP_EPOCHS + size.epochs, timers[row])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
        finally:
            turns.leave(row)

    threads = [threading.Thread(target=run_row, args=(row,), name=row, daemon=True)
               for row in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    epochs = {row: timers[row].epochs[WARMUP_EPOCHS:] for row in names}
    for row in names:
        print(f"  {name:5s} {row:28s} " + " ".join(f"{w:.3f}" for w, _ in epochs[row]), flush=True)
    base = epochs[BASELINE]
    result = {}
    for row in names:
        times = epochs[row]
        paired = min(len(times), len(base))  # EarlyStopping may end a fit before the others
        result[row] = {
            "epochs_wall_s": [w for w, _ in times], "epochs_cpu_s": [c for _, c in times],
            "median_wall_s": statistics.median(w for w, _ in times),
            "median_cpu_s": statistics.median(c for _, c in times),
            # epoch by epoch against the plain loop's epoch of the same turn
            "ratio_wall": statistics.median(w / b for (w, _), (b, _) in
                                            zip(times[:paired], base[:paired], strict=True)),
            "ratio_cpu": statistics.median(c / b for (_, c), (_, b) in
                                           zip(times[:paired], base[:paired], strict=True)),
        }
    return {"label": size.label, "train_windows": shapes["train"],
            "steps_per_epoch": -(-shapes["train"] // shapes["batch"]), "rows": result}


# --- report --------------------------------------------------------------------------------------


def summarise(runs: list[dict], sizes: list[str], rows: list[str]) -> dict:
    summary = {}
    for name in sizes:
        per_row = {}
        for row in rows:
            results = [run[name]["rows"][row] for run in runs]
            ratios = [r["ratio_wall"] for r in results]
            per_row[row] = {"median_wall_s": statistics.median(r["median_wall_s"] for r in results),
                            "ratio_wall": statistics.median(ratios),
                            "ratio_wall_range": [min(ratios), max(ratios)],
                            "ratio_cpu": statistics.median(r["ratio_cpu"] for r in results)}
        first = runs[0][name]
        summary[name] = {"label": first["label"], "train_windows": first["train_windows"],
                         "steps_per_epoch": first["steps_per_epoch"], "target": TARGET[name],
                         "rows": per_row}
    return summary


def machine() -> dict:
    gpu = torch.cuda.get_device_name() if DEVICE.name == "cuda" else None
    return {"cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "gpu": gpu,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "lightning": L.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"# Training-loop speed on {report['device']} ({report['precision']}): the pipeline against "
        "a plain PyTorch loop", "",
        f"- {m['logical_cpus']} logical CPUs ({m['cpu']}), torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), Lightning {m['lightning']}, Python {m['python']}",
        f"- load average (1 min) at start / end: {report['load_average'][0]:.2f} / "
        f"{report['load_average'][1]:.2f}",
        f"- {report['runs']} runs; the rows take turns an epoch at a time; {WARMUP_EPOCHS} warm-up "
        "epoch dropped; s/epoch: median epoch; x plain: median of epoch / plain epoch of the same "
        "turn, the median over runs with the min-max range across runs in brackets",
        "", "| size | train windows (steps/epoch) | loop | s/epoch | x plain (range) | "
        "x plain, CPU s | target |", "|---|---|---|---:|---:|---:|---:|",
    ]
    for size in report["summary"].values():
        for row, r in size["rows"].items():
            low, high = r["ratio_wall_range"]
            target = f"<= {size['target']:.2f}" if row == "pipeline" else ""
            lines.append(f"| {size['label']} | {size['train_windows']:,} ({size['steps_per_epoch']}) "
                         f"| {row} | {r['median_wall_s']:.3f} | {r['ratio_wall']:.2f} "
                         f"({low:.2f}-{high:.2f}) | {r['ratio_cpu']:.2f} | {target} |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default=",".join(SIZES),
                        help="comma-separated, from: " + ", ".join(SIZES))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own choice, as the pipeline runs)")
    parser.add_argument("--ablations", action="store_true",
                        help="add pipeline rows with one part removed at a time")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("32-true", "bf16-mixed"), default="32-true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="results folder (default: %(default)s)")
    args = parser.parse_args()
    args.sizes = [s for s in args.sizes.split(",") if s]
    unknown = sorted(set(args.sizes) - set(SIZES))
    if unknown:
        parser.error(f"--sizes: unknown {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    return args


def quiet() -> None:
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def main() -> None:
    global DEVICE
    args = parse_args()
    DEVICE = Device(args.device, args.precision)
    if DEVICE.name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {**ROWS, **(ABLATIONS if args.ablations else {})}
    load_start = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", flush=True)
            results = {}
            for name in args.sizes:
                workdir = Path(tmp) / f"run{run}-{name}"
                workdir.mkdir()
                results[name] = measure_size(name, rows, workdir)
            runs.append(results)
    report = {"benchmark": "training loop", "device": DEVICE.name, "precision": DEVICE.precision,
              "machine": machine(),
              "load_average": [load_start, os.getloadavg()[0]], "runs": args.runs,
              "warmup_epochs": WARMUP_EPOCHS,
              "sizes": {n: {"overrides": list(SIZES[n].overrides), "epochs": SIZES[n].epochs}
                        for n in args.sizes},
              "summary": summarise(runs, args.sizes, list(rows)), "per_run": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "training_loop_" + ("cpu" if DEVICE.name == "cpu" else f"cuda_{DEVICE.precision}")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"{stem}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
