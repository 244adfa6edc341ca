"""Where a default `make train` spends its time outside the fit: import, data, tracking set-up,
fit, test, publish (artifacts, plots, model, registry, promotion).

Usage: python benchmarks/bench_overhead.py [--runs 3] [--out DIR]

Each run is a fresh process (`python benchmarks/bench_overhead.py --child`), as `make train` is:
imports are timed from the process start, and the stages by wrapping the functions
pipeline.training calls (build_datamodule, Trainer.fit, Trainer.test, finish_run). Odd runs use
a new sqlite store (what a first `make train` pays: MLflow creates its tables), even runs reuse
the previous run's store. Results go to ``<out>/overhead_cpu.json`` and ``.md`` (default
``.bench/``; ``--out benchmarks/results`` updates the recorded ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO_ROOT = Path(__file__).resolve().parents[1]
STAGES = ("import", "data", "tracking set-up", "fit", "test", "publish")


def child() -> None:
    """One default training, timed by stage; prints one JSON line."""
    import lightning as L

    import pipeline.training as training
    from pipeline.cli import load_config, quiet_mlflow
    from pipeline.tracking.store import Store

    quiet_mlflow()
    times = {"import": time.perf_counter() - STARTED}

    def timed(stage, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[stage] = times.get(stage, 0.0) + time.perf_counter() - start
        return wrapper

    training.build_datamodule = timed("data", training.build_datamodule)
    training.start_tracking = timed("tracking set-up", training.start_tracking)
    Store.check = timed("tracking set-up", Store.check)  # a new sqlite store creates its tables here
    training.finish_run = timed("publish", training.finish_run)
    L.Trainer.fit = timed("fit", L.Trainer.fit)
    L.Trainer.test = timed("test", L.Trainer.test)
    start = time.perf_counter()
    training.train(load_config("train", ["trainer.progress_bar=false"]))
    times["total"] = times["import"] + time.perf_counter() - start
    times["outside fit"] = times["total"] - times["fit"]
    print(json.dumps(times))


def run_child(workdir: Path) -> dict[str, float]:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"], cwd=workdir,
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}"})
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(report: dict) -> str:
    lines = ["# Where a default `make train` spends its time (CPU)", "",
             f"- {report['machine']}; load average at start / end: "
             f"{report['load_average'][0]:.2f} / {report['load_average'][1]:.2f}",
             f"- {report['runs']} runs per store state, each a fresh process; seconds, median (min-max)",
             "", "| store | " + " | ".join(STAGES) + " | fit excluded: outside fit | total |",
             "|---|" + "---:|" * (len(STAGES) + 2)]
    for state, runs in report["per_state"].items():
        cells = []
        for key in (*STAGES, "outside fit", "total"):
            values = [r.get(key, 0.0) for r in runs]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".bench")
    args = parser.parse_args()
    if args.child:
        child()
        return
    load_start = os.getloadavg()[0]
    per_state: dict[str, list[dict]] = {"new store": [], "existing store": []}
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        for run in range(args.runs):
            workdir = Path(tmp) / f"run{run}"
            workdir.mkdir()
            per_state["new store"].append(run_child(workdir))
            per_state["existing store"].append(run_child(workdir))
            print(f"run {run + 1}/{args.runs}: new {per_state['new store'][-1]['outside fit']:.2f} s, "
                  f"existing {per_state['existing store'][-1]['outside fit']:.2f} s outside fit",
                  flush=True)
    report = {"benchmark": "make train overhead", "runs": args.runs,
              "machine": f"{os.cpu_count()} logical CPUs ({platform.machine()}), Python "
                         f"{platform.python_version()}",
              "load_average": [load_start, os.getloadavg()[0]], "per_state": per_state}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overhead_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "overhead_cpu.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
