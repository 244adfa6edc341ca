"""Many series, the data layer: how long a universe takes to prepare, the memory it holds, and
how fast training batches are gathered from its window index, at 50, 500 and 2,000 series.

Usage: python benchmarks/bench_universe.py [--runs 3] [--days 1500] [--out DIR]

Each size is a synthetic universe (pipeline.data.universe.synthetic_universe: correlated random
walks with regime changes, 1,500 business days) prepared for lookback 20, horizon 1, a 70/15/15
date split. Peak memory is what tracemalloc sees during prepare_universe; "index held" is what
the prepared windows keep (each split's rows once, float32, and the window starts), against the
x and y arrays materialised windows would take. Gathering draws batches of 256 random windows
from the training split. Figures are medians over --runs; results go to
``<out>/universe_cpu.json`` and ``.md`` (default ``.bench/``; ``--out benchmarks/results``
updates the recorded ones). Training over a universe is not wired yet: this measures the data
layer alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.data.universe import UniverseData, prepare_universe, synthetic_universe
from pipeline.data.windowing import WindowSpec

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = (50, 500, 2000)
SPEC = WindowSpec(lookback=20, horizon=1)
SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}
BATCH, BATCHES = 256, 1000


def prepare(frame) -> tuple[UniverseData, float, float]:
    """The prepared universe, its wall time and its peak traced memory (MiB)."""
    tracemalloc.start()
    start = time.perf_counter()
    data = prepare_universe(frame, ["close"], ["close"], SPEC, SPLIT)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return data, seconds, peak / 2**20


def held_mib(data: UniverseData) -> tuple[float, float]:
    """What the window index keeps, and what materialised float32 x and y windows would take."""
    arrays = ("x_values", "y_values", "frame_rows", "starts", "series_ids")
    held = sum(getattr(w, name).nbytes for w in data.windows.values() for name in arrays)
    windows = sum(len(w) for w in data.windows.values())
    features = len(data.inputs) * SPEC.lookback + len(data.targets) * SPEC.horizon
    return held / 2**20, windows * features * 4 / 2**20


def gather_rate(data: UniverseData, seed: int) -> float:
    """Training windows gathered per second, in random batches of BATCH."""
    train = data.windows["train"]
    batches = np.random.default_rng(seed).integers(0, len(train), (BATCHES, BATCH))
    start = time.perf_counter()
    for batch in batches:
        train.batch(batch)
    return BATCHES * BATCH / (time.perf_counter() - start)


def measure(n_series: int, days: int, runs: int) -> dict:
    frame = synthetic_universe(n_series, days, seed=0)
    prepared = [prepare(frame) for _ in range(runs)]
    data = prepared[0][0]
    held, materialised = held_mib(data)
    return {
        "series": n_series, "kept": len(data.series), "rows": len(frame),
        "windows": sum(len(w) for w in data.windows.values()),
        "frame_mib": frame.memory_usage(deep=True).sum() / 2**20,
        "prepare_s": statistics.median(seconds for _, seconds, _ in prepared),
        "peak_mib": statistics.median(peak for _, _, peak in prepared),
        "held_mib": held, "materialised_mib": materialised,
        "gather_windows_per_s": statistics.median(gather_rate(data, seed) for seed in range(runs)),
    }


def markdown(report: dict) -> str:
    lines = ["# Many series, the data layer (CPU)", "",
             f"- {report['machine']}; load average at start / end: "
             f"{report['load_average'][0]:.2f} / {report['load_average'][1]:.2f}",
             f"- {report['days']} business days per series, lookback {SPEC.lookback}, horizon "
             f"{SPEC.horizon}, split 70/15/15 by date; medians of {report['runs']} runs",
             "- training over a universe is not wired yet: this is the data layer alone", "",
             "| series (kept) | windows | prepare s | peak MiB (frame MiB) | index held MiB | "
             "materialised x+y MiB | gathered windows/s (batch 256) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["sizes"]:
        lines.append(f"| {r['series']:,} ({r['kept']:,}) | {r['windows']:,} | {r['prepare_s']:.2f} | "
                     f"{r['peak_mib']:.0f} ({r['frame_mib']:.0f}) | {r['held_mib']:.1f} | "
                     f"{r['materialised_mib']:.0f} | {r['gather_windows_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".bench")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the short series each universe drops, named per size
    load_start = os.getloadavg()[0]
    sizes = []
    for n_series in SIZES:
        sizes.append(measure(n_series, args.days, args.runs))
        print(f"{n_series:5d} series: {sizes[-1]['prepare_s']:.2f} s, "
              f"{sizes[-1]['gather_windows_per_s']:,.0f} windows/s", flush=True)
    report = {"benchmark": "universe data layer", "runs": args.runs, "days": args.days,
              "machine": f"{os.cpu_count()} logical CPUs ({platform.machine()}), Python "
                         f"{platform.python_version()}",
              "load_average": [load_start, os.getloadavg()[0]], "sizes": sizes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "universe_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "universe_cpu.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
