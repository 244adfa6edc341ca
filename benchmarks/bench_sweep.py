"""What a sweep costs, and what pruning and a second worker save. Real Optuna studies of tiny
sine trials (400 points, 6 epochs of an 8-32 unit network) on fresh sqlite MLflow stores:

1. pruning: the same 20-trial study (same seed, same budget) with the median pruner and with
   none, in-process; wall time of each and the best value each found;
2. workers: a 12-trial study (15 epochs on 1600 points a trial, no pruner, so both runs do the
   same work) by one
   `python -m pipeline.sweep` process, then by two at once on one journal file; wall time from
   start to the last process's exit, and the ratio;
3. overhead: where a trial's time goes outside fit (setup: config, data, run, Trainer; publish:
   test, baselines, artifacts, tags), medians over the complete trials of run 1 without pruning,
   and the import of the training stack in a fresh process (median of 3).

    python benchmarks/bench_sweep.py [--out benchmarks/results] [--trials 20] [--worker-trials 12]

Writes sweep_cpu.{json,md}. The load average before and after is recorded: this machine is
shared, so compare the ratios, which are measured side by side in one run.
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

import yaml

REPO = Path(__file__).resolve().parent.parent
TRIAL = ["data.params.points=400", "data.lookback=20", "trainer.max_epochs=6",
         "trainer.early_stopping_patience=0", "trainer.progress_bar=false", "trainer.model_summary=false"]
PARAMS = {"model.name": {"categorical": ["lstm", "gru"]},
          "model.hidden_size": {"int": [8, 32], "log": True},
          "optim.lr": {"float": [1.0e-4, 5.0e-2], "log": True}}


def write_space(path: Path, n_trials: int, pruner: str, epochs: int = 6, points: int = 400) -> str:
    trial = [o for o in TRIAL if not o.startswith(("trainer.max_epochs", "data.params.points"))]
    trial += [f"trainer.max_epochs={epochs}", f"data.params.points={points}"]
    path.write_text(yaml.safe_dump({
        "objective": "val/loss", "direction": "minimize", "n_trials": n_trials,
        "sampler": {"name": "tpe", "seed": 7, "n_startup_trials": 5},
        "pruner": {"name": pruner, "n_startup_trials": 4, "n_warmup_steps": 1},
        "overrides": trial, "params": PARAMS}))
    return str(path)


def in_process_sweep(n_trials: int, pruner: str) -> dict:
    from pipeline.sweep.runner import run_sweep

    with tempfile.TemporaryDirectory(prefix=f"bench-sweep-{pruner}-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            started = time.perf_counter()
            report = run_sweep(write_space(Path(tmp) / f"{pruner}.yaml", n_trials, pruner), echo=lambda _: None)
            wall = time.perf_counter() - started
        finally:
            os.chdir(cwd)
    outcomes = report.outcomes
    return {"pruner": pruner, "wall_s": round(wall, 2), "timings": {k: round(v, 2) for k, v in report.timings.items()},
            "complete": sum(o.state == "complete" for o in outcomes),
            "pruned": sum(o.state == "pruned" for o in outcomes),
            "best_value": report.summary.best_value,
            "trial_s_median": round(statistics.median(o.seconds for o in outcomes), 3),
            "outcomes": [{"number": o.number, "state": o.state, "seconds": round(o.seconds, 3),
                          "setup_s": _r(o.setup_s), "fit_s": _r(o.fit_s), "publish_s": _r(o.publish_s)}
                         for o in outcomes]}


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def worker_sweep(n_trials: int, workers: int, epochs: int, points: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-workers-{workers}-") as tmp:
        space = write_space(Path(tmp) / "workers.yaml", n_trials, "none", epochs, points)
        # One torch thread per worker: two workers on two cores, not four threads fighting for them.
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1"}
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "pipeline.sweep", f"hparams_search={space}"],
                                  cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(workers)]
        outputs = [p.communicate(timeout=1800) for p in procs]
        wall = time.perf_counter() - started
        for proc, (_out, err) in zip(procs, outputs, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"worker failed:\n{err[-3000:]}")
        per_worker = [sum(line.startswith("trial ") for line in out.splitlines()) for out, _ in outputs]
    return {"workers": workers, "wall_s": round(wall, 2), "trials_per_worker": per_worker,
            "load_average_after": round(os.getloadavg()[0], 2)}


def import_seconds(repeats: int = 3) -> float:
    code = "import time; t = time.perf_counter(); import pipeline.training; print(time.perf_counter() - t)"
    times = [float(subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout) for _ in range(repeats)]
    return round(statistics.median(times), 2)


def overhead(run: dict) -> dict:
    complete = [o for o in run["outcomes"] if o["state"] == "complete" and o["fit_s"] is not None]
    med = {k: round(statistics.median(o[k] for o in complete), 3) for k in ("setup_s", "fit_s", "publish_s", "seconds")}
    med["outside_fit_s"] = round(med["setup_s"] + med["publish_s"], 3)
    med["trials"] = len(complete)
    return med


def markdown(report: dict) -> str:
    p, n, w1, w2, o = (report["pruning"]["median"], report["pruning"]["none"], report["workers"]["one"],
                       report["workers"]["two"], report["overhead"])
    return "\n".join([
        "# Sweep costs (CPU)", "",
        f"`python benchmarks/bench_sweep.py` on {report['machine']}, load average "
        f"{report['load_average'][0]} before, {report['load_average'][1]} after"
        + (f" (parts 1 and 3 kept from an earlier run at {report['load_average_parts_1_3']})"
           if "load_average_parts_1_3" in report else "") + " (a shared machine: read the ratios).", "",
        f"## Pruning: {report['trials']} trials, same seed and budget", "",
        "| pruner | wall s | complete | pruned | median trial s | best val/loss |", "|---|---|---|---|---|---|",
        f"| none | {n['wall_s']} | {n['complete']} | {n['pruned']} | {n['trial_s_median']} | {n['best_value']:.5g} |",
        f"| median | {p['wall_s']} | {p['complete']} | {p['pruned']} | {p['trial_s_median']} | {p['best_value']:.5g} |", "",
        f"Pruning saves **{report['pruning']['saving_pct']}%** of the wall time.", "",
        f"## Workers: {report['worker_trials']} trials of {report['worker_epochs']} epochs on "
        f"{report['worker_points']} points, one journal file (no pruner)", "",
        "| workers | wall s | trials per worker |", "|---|---|---|",
        f"| 1 | {w1['wall_s']} | {w1['trials_per_worker']} |",
        f"| 2 | {w2['wall_s']} | {w2['trials_per_worker']} |", "",
        f"Two workers take **{report['workers']['ratio']}x** the wall time of one "
        f"(one torch thread per worker; each process pays its own imports and store setup; the machine has "
        f"{os.cpu_count()} cores, load average after each: {w1['load_average_after']}, {w2['load_average_after']}).", "",
        *([] if report["workers"]["ratio"] < 0.9 else [
            "No gain measured: the work was split (trials per worker above) with no trial run twice, but "
            "on a machine whose cores are already busy (see the load average) a second process finds no "
            "idle core, and each worker pays its own start (imports, store, summary). Run it where a core "
            "is free per worker to see the split pay.", ""]),
        "## Where a trial's time goes (median over the complete trials of the unpruned run)", "",
        "| import (once per process) | setup | fit | publish | outside fit |", "|---|---|---|---|---|",
        f"| {o['import_s']} s | {o['setup_s']} s | {o['fit_s']} s | {o['publish_s']} s | **{o['outside_fit_s']} s** |", "",
        "setup: config composed and checked, data, network, child run with params, Trainer; publish: test "
        "split, baselines, predictions, plots, artifacts, best checkpoint (no model: only the best trial's is "
        "logged, at the end).", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".bench")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--worker-trials", type=int, default=12)
    # Trials long enough that a worker's own fixed costs (imports, store, the final
    # registration: about 20 s here) do not hide what a second worker adds.
    parser.add_argument("--worker-epochs", type=int, default=15)
    parser.add_argument("--worker-points", type=int, default=1600)
    parser.add_argument("--only-workers", action="store_true",
                        help="rerun part 2 only, keeping parts 1 and 3 from the JSON in --out")
    args = parser.parse_args()
    from pipeline.cli import configure_logging, quiet_mlflow

    quiet_mlflow()
    configure_logging()
    import pipeline.training  # noqa: F401 - imported once, outside every timing

    in_process_sweep(1, "none")  # warm-up: first-use costs (kernels, caches) land in no measurement
    load_start = os.getloadavg()[0]
    if args.only_workers:
        kept = json.loads((args.out / "sweep_cpu.json").read_text())
        none, median = kept["pruning"]["none"], kept["pruning"]["median"]
    else:
        none = in_process_sweep(args.trials, "none")
        median = in_process_sweep(args.trials, "median")
    one = worker_sweep(args.worker_trials, 1, args.worker_epochs, args.worker_points)
    two = worker_sweep(args.worker_trials, 2, args.worker_epochs, args.worker_points)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "trials": args.trials, "worker_trials": args.worker_trials, "worker_epochs": args.worker_epochs,
        "worker_points": args.worker_points,
        "pruning": {"none": none, "median": median,
                    "saving_pct": round(100 * (1 - median["wall_s"] / none["wall_s"]), 1)},
        "workers": {"one": one, "two": two, "ratio": round(two["wall_s"] / one["wall_s"], 2)},
        "overhead": (kept["overhead"] if args.only_workers else {"import_s": import_seconds(), **overhead(none)}),
    }
    if args.only_workers:
        report["load_average_parts_1_3"] = kept.get("load_average_parts_1_3", kept["load_average"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "sweep_cpu.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
