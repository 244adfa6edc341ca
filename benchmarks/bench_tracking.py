"""Does MLflow logging slow training? The same fit (same data, model, seed, steps) timed with no
logger, with Lightning's MLflow logger (synchronous and asynchronous), and with the pipeline's
buffered logger. The store connection and the run exist before the timer starts, as in
pipeline.train, so what is measured is the training loop's overhead.

    python benchmarks/bench_tracking.py [--repeats 5] [--epochs 10] [--out benchmarks/results]

Writes tracking_overhead.{json,md}: median seconds per mode and the overhead vs no logger.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import MLFlowLogger

from pipeline.cli import load_config
from pipeline.data.datamodule import build_datamodule
from pipeline.tracking.logger import BufferedMLFlowLogger
from pipeline.tracking.run import open_run
from pipeline.tracking.store import open_store
from pipeline.training import build_module

MODES = ("no logger", "mlflow sync", "mlflow async", "pipeline buffered")


def fit_seconds(cfg, mode: str, store: Path, epochs: int) -> float:
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg.data)
    module = build_module(cfg, dm.prepared)
    logger = False
    if mode == "pipeline buffered":  # what pipeline.training uses, on a run opened before timing
        handle = open_run(open_store(f"sqlite:///{store}"), "bench", "bench", {}, {})
        logger = BufferedMLFlowLogger(handle)
    elif mode != "no logger":
        logger = MLFlowLogger(experiment_name="bench", tracking_uri=f"sqlite:///{store}",
                              synchronous=(mode == "mlflow sync"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=10)
    if isinstance(logger, MLFlowLogger):
        # Connect and create the run before timing, as the pipeline does (open_run), so the
        # loop's overhead is what is left.
        _ = logger.run_id
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    if logger:
        import mlflow

        mlflow.flush_async_logging()  # async writes count until they are on disk
        logger.finalize("success")  # the buffered logger's last write counts too
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = load_config("train")
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.db"
        fit_seconds(cfg, "mlflow sync", store, 1)  # warm-up: imports, store schema creation
        for _ in range(args.repeats):
            for mode in MODES:  # interleaved, so drift in machine load hits every mode alike
                times[mode].append(fit_seconds(cfg, mode, store, args.epochs))
    base = statistics.median(times["no logger"])
    rows = [{"mode": m, "median_s": statistics.median(t), "runs_s": t,
             "overhead_pct": 100 * (statistics.median(t) / base - 1)} for m, t in times.items()]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version()}
    result = {"benchmark": "tracking overhead", "config": "default sine/lstm",
              "epochs": args.epochs, "repeats": args.repeats, "machine": machine, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracking_overhead.json").write_text(json.dumps(result, indent=2))
    lines = [f"Training-loop time with and without MLflow logging ({args.epochs} epochs of the default "
             f"sine/lstm config, median of {args.repeats}; {machine['cores']} cores, torch {machine['torch']})",
             "", "| mode | median s | overhead vs no logger |", "|---|---|---|"]
    lines += [f"| {r['mode']} | {r['median_s']:.3f} | {r['overhead_pct']:+.1f}% |" for r in rows]
    (out / "tracking_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
