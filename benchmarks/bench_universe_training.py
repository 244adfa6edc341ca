"""Many series, training: how fast one global model trains over a universe, and the memory it
takes, in one process and in 2-process DDP on CPU, at 50, 500 and 2,000 series.

Usage: python benchmarks/bench_universe_training.py [--runs 3] [--days 1500] [--steps N] [--out DIR]

Why: data.layout=universe holds each split's rows once (float32) and an index of window starts,
and gathers a batch's windows on demand (pipeline.data.datamodule.UniverseBatches). This checks
what that costs in training and that memory stays flat while training runs: no copy per epoch,
no materialised windows, whatever the number of steps.

Each measurement is a subprocess of this script in worker mode (``--worker --series N
--devices K --result FILE``): Lightning's DDP launcher re-executes ``sys.argv`` for its other
ranks, so the measured code has to be a script that does only that measurement. A worker
composes the pipeline's config (``load_config("train", ["data=universe_synthetic",
"data.params.n_series=N", "data.params.days=D"])``: lookback 20, batch 512, log-return targets,
the default model: LSTM H32 with a series embedding), builds the DataModule and ForecastModule
as ``pipeline.training`` does (``build_datamodule``, ``build_module``), and fits a bare
``lightning.Trainer`` for ``--steps`` optimizer steps: no validation, checkpoints, logger,
progress bar or model summary, so the loop is training steps alone. Under DDP (gloo, CPU) each
rank writes its own result file; the orchestrator combines them.

* windows/s: training windows of every rank in the timed steps (all but the first WARMUP_STEPS)
  over the wall time they took (the slowest rank's: DDP steps in lockstep).
* memory: peak RSS per process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and their sum;
  the RSS (VmRSS) after the data is prepared and the module built, after the warm-up steps, at
  each epoch's end and after fit: flat from warm-up on means training adds nothing per epoch.
* held: what the window index keeps (bench_universe.held_mib) against materialised float32
  windows.

Threads: 2 cores, so one process runs torch with 2 intra-op threads and each DDP rank with 1
(OMP_NUM_THREADS and torch.set_num_threads), never more threads than cores. The orchestrator
loops sizes x {1, 2} processes x --runs and takes medians. Results go to
``<out>/universe_training_cpu.json`` and ``.md`` (default ``.bench/``; ``--out benchmarks/results``
updates the recorded ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SIZES = (50, 500, 2000)
PROCESSES = (1, 2)
CORES = 2  # the machine this is sized for; threads per process = CORES // processes
WARMUP_STEPS = 10
# The default: enough steps that 50 series cross an epoch boundary in one process (88 steps an
# epoch at 1,500 days, batch 512; 44 per DDP rank), few enough for ~10 minutes in all (most of a
# run is starting Python, torch and Lightning and preparing the universe, not the steps).
DEFAULT_STEPS = 150
WORKER_TIMEOUT_S = 600


# --- memory -------------------------------------------------------------------------------------


def rss_mib() -> float:
    """This process's resident set now (VmRSS), MiB."""
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    """This process's peak resident set so far (ru_maxrss is KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


# --- the worker: one measurement, one process per rank ------------------------------------------


def worker_overrides(n_series: int, days: int) -> list[str]:
    return ["data=universe_synthetic", f"data.params.n_series={n_series}",
            f"data.params.days={days}"]


def make_step_timer(warmup: int):
    """A callback timing the steps after `warmup` and taking RSS at the warm-up's end and at
    each epoch's end (Lightning is imported lazily: the orchestrator never loads it)."""
    import lightning as L

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.end: float | None = None
            self.windows = 0
            self.steps = 0
            self.rss_after_warmup: float | None = None
            self.rss_epoch_end: list[float] = []
            self.batches_per_epoch = 0

        def on_train_start(self, trainer, pl_module) -> None:
            self.batches_per_epoch = int(trainer.num_training_batches)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == warmup:
                self.rss_after_warmup = rss_mib()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            # global_step counts optimizer steps, this one included (manual optimization steps
            # the optimizer inside training_step).
            if self.start is not None:
                self.windows += len(batch[0])
                self.steps += 1
                self.end = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.rss_epoch_end.append(rss_mib())

    return StepTimer()


def build_trainer(devices: int, steps: int, timer):
    """A bare Trainer: training steps only, no validation, checkpoints, logger or bars."""
    import lightning as L

    return L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer],
        # As pipeline.training.build_trainer: the DataModule picks its own samplers under DDP.
        use_distributed_sampler=False,
    )


def run_worker(args: argparse.Namespace) -> None:
    """Prepare the universe, fit --steps steps, write this rank's numbers to --result(.rankN)."""
    threads = max(1, CORES // args.devices)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # Lightning's launcher reads it
    import lightning as L
    import torch
    from bench_universe import held_mib  # benchmarks/ is sys.path[0] when run as a script

    from pipeline.cli import load_config
    from pipeline.data.datamodule import build_datamodule
    from pipeline.training import build_module

    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)  # the short series each universe drops, named per size
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    rss_start = rss_mib()
    cfg = load_config("train", worker_overrides(args.series, args.days))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    begin = time.perf_counter()
    dm = build_datamodule(cfg.data)
    prepare_s = time.perf_counter() - begin
    module = build_module(cfg, dm.prepared)
    rss_before_fit = rss_mib()
    timer = make_step_timer(WARMUP_STEPS)
    trainer = build_trainer(args.devices, args.steps, timer)
    trainer.fit(module, datamodule=dm)
    held, materialised = held_mib(dm.prepared)
    result = {
        "rank": trainer.global_rank, "world_size": trainer.world_size,
        "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ["OMP_NUM_THREADS"],
        "series": args.series, "kept": len(dm.prepared.series),
        "train_windows": len(dm.prepared.windows["train"]), "prepare_s": prepare_s,
        "steps": trainer.global_step, "timed_steps": timer.steps, "timed_windows": timer.windows,
        "timed_s": (timer.end - timer.start) if timer.start and timer.end else None,
        "batches_per_epoch": timer.batches_per_epoch,
        # Lightning ends an epoch cut short by max_steps too: the last entry is that one.
        "epoch_ends": len(timer.rss_epoch_end),
        "rss_start_mib": rss_start, "rss_before_fit_mib": rss_before_fit,
        "rss_after_warmup_mib": timer.rss_after_warmup, "rss_epoch_end_mib": timer.rss_epoch_end,
        "rss_after_fit_mib": rss_mib(), "peak_rss_mib": peak_rss_mib(),
        "vm_hwm_mib": _status_kib("VmHWM") / 1024,
        "held_mib": held, "materialised_mib": materialised,
    }
    path = Path(f"{args.result}.rank{trainer.global_rank}")
    path.write_text(json.dumps(result, indent=2) + "\n")


# --- the orchestrator ---------------------------------------------------------------------------


def worker_command(n_series: int, devices: int, args: argparse.Namespace, result: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", "--series", str(n_series),
            "--devices", str(devices), "--days", str(args.days), "--steps", str(args.steps),
            "--result", str(result)]


def measure_once(n_series: int, devices: int, args: argparse.Namespace) -> dict:
    """One worker run (all its ranks), combined: windows/s over every rank, memory per rank."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // devices))}
        begin = time.perf_counter()
        subprocess.run(worker_command(n_series, devices, args, result), check=True, env=env,
                       cwd=REPO_ROOT, timeout=WORKER_TIMEOUT_S, stdout=subprocess.DEVNULL)
        wall_s = time.perf_counter() - begin
        ranks = [json.loads(Path(f"{result}.rank{r}").read_text()) for r in range(devices)]
    return combine(ranks, wall_s)


def combine(ranks: list[dict], wall_s: float) -> dict:
    seconds = max(r["timed_s"] for r in ranks)  # ranks wait for each other in every all-reduce
    first = ranks[0]
    return {
        "windows_per_s": sum(r["timed_windows"] for r in ranks) / seconds,
        "peak_rss_mib": [r["peak_rss_mib"] for r in ranks],
        "peak_rss_sum_mib": sum(r["peak_rss_mib"] for r in ranks),
        "vm_hwm_mib": [r["vm_hwm_mib"] for r in ranks],
        "rss_before_fit_mib": first["rss_before_fit_mib"],
        "rss_after_warmup_mib": first["rss_after_warmup_mib"],
        "rss_after_fit_mib": first["rss_after_fit_mib"],
        "rss_epoch_end_mib": first["rss_epoch_end_mib"],
        "epochs": first["steps"] / first["batches_per_epoch"],
        "batches_per_epoch": first["batches_per_epoch"],
        "steps": first["steps"], "timed_steps": first["timed_steps"],
        "torch_threads": [r["torch_threads"] for r in ranks],
        "prepare_s": first["prepare_s"], "wall_s": wall_s,
        "kept": first["kept"], "train_windows": first["train_windows"],
        "held_mib": first["held_mib"], "materialised_mib": first["materialised_mib"],
    }


def medians(n_series: int, devices: int, runs: list[dict]) -> dict:
    """Medians over runs of the numbers; the rest from the first run (the same every run)."""
    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    row = dict(runs[0])
    for key in ("windows_per_s", "peak_rss_sum_mib", "rss_before_fit_mib", "rss_after_warmup_mib",
                "rss_after_fit_mib", "prepare_s", "wall_s"):
        row[key] = med(key)
    row["peak_rss_mib"] = [statistics.median(r["peak_rss_mib"][k] for r in runs)
                           for k in range(devices)]
    row["windows_per_s_range"] = [min(r["windows_per_s"] for r in runs),
                                  max(r["windows_per_s"] for r in runs)]
    return {"series": n_series, "processes": devices, **row, "runs": runs}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip()
                  for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    import torch  # here only, for its version: the workers import it themselves

    return (f"{model}, {os.cpu_count()} logical CPUs ({platform.machine()}), Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def markdown(report: dict) -> str:
    lines = ["# Many series, training (CPU)", "",
             f"- {report['machine']}; load average (1 min) at start / end: "
             f"{report['load_average'][0]:.2f} / {report['load_average'][1]:.2f}",
             f"- command: `{report['command']}`; whole bench {report['wall_s'] / 60:.1f} min",
             f"- {report['days']} business days per series, lookback 20, batch 512 per process, "
             "log-return targets, LSTM H32 with a series embedding (the default model); "
             f"{report['steps']} optimizer steps per process, the first {WARMUP_STEPS} not timed; "
             f"medians of {report['runs']} runs",
             "- 1 process: torch with 2 threads; DDP (gloo, CPU): 2 processes with 1 thread each, "
             "each batch 512, so a step is 1,024 windows",
             "- windows/s: training windows of every process per second of the timed steps; "
             "peak RSS: ru_maxrss per process; RSS (rank 0): after the data is prepared and the "
             "module built → after the warm-up steps → after fit",
             "",
             "| series (kept) | processes | windows/s (min-max) | peak RSS per process MiB | "
             "sum MiB | RSS before fit → warm-up → after fit MiB | epochs (steps/epoch) | "
             "held MiB (materialised) | prepare s | run s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        low, high = r["windows_per_s_range"]
        per_process = " / ".join(f"{m:.0f}" for m in r["peak_rss_mib"])
        lines.append(
            f"| {r['series']:,} ({r['kept']:,}) | {r['processes']} | {r['windows_per_s']:,.0f} "
            f"({low:,.0f}-{high:,.0f}) | {per_process} | {r['peak_rss_sum_mib']:.0f} | "
            f"{r['rss_before_fit_mib']:.0f} → {r['rss_after_warmup_mib']:.0f} → "
            f"{r['rss_after_fit_mib']:.0f} | {r['epochs']:.2f} ({r['batches_per_epoch']:,}) | "
            f"{r['held_mib']:.1f} ({r['materialised_mib']:.0f}) | {r['prepare_s']:.1f} | "
            f"{r['wall_s']:.0f} |")
    lines += ["", *notes(report)]
    return "\n".join(lines) + "\n"


def notes(report: dict) -> list[str]:
    """What the table shows about epochs and memory, from the numbers themselves."""
    out = []
    for r in report["rows"]:
        crossed = (r["steps"] - 1) // r["batches_per_epoch"]
        if crossed:
            epoch_rss = " → ".join(f"{m:.0f}" for m in r["rss_epoch_end_mib"])
            out.append(f"- {r['series']} series, {_processes(r)}: {r['steps']} steps crossed "
                       f"{crossed} epoch boundar{'y' if crossed == 1 else 'ies'} "
                       f"({r['batches_per_epoch']} steps an epoch); rank 0 RSS at each epoch's "
                       f"end (the last one cut short by max_steps) {epoch_rss} MiB")
    noisy = [r for r in report["rows"]
             if r["windows_per_s_range"][1] > 3 * r["windows_per_s_range"][0]]
    if noisy:
        # Two intra-op threads on two cores wait for each other at every op: when another job
        # holds a core, a step takes many times longer (benchmarks/bench_training.py says so too).
        out.append("- runs more than 3x apart (" + "; ".join(
            f"{r['series']} series, {_processes(r)}" for r in noisy) + "): other jobs held a "
            "core during some runs, and a process with 2 intra-op threads then stalls at every "
            "op; the rows with one thread per process vary far less. These medians are of a "
            "shared machine, not of the code alone")
    # ru_maxrss is what Linux keeps for the process across exec; VmHWM is the peak of its own
    # address space. A DDP rank is forked from rank 0, so the two could differ: say by how much.
    gap = max(abs(a - b) for r in report["rows"] for run in r["runs"]
              for a, b in zip(run["peak_rss_mib"], run["vm_hwm_mib"], strict=True))
    out.append(f"- peak RSS: ru_maxrss and /proc VmHWM agree within {gap:.1f} MiB in every run")
    return out


def _processes(row: dict) -> str:
    return "1 process" if row["processes"] == 1 else f"{row['processes']} processes (DDP)"


def orchestrate(args: argparse.Namespace) -> None:
    load_start = os.getloadavg()
    begin = time.perf_counter()
    cases = [(n_series, devices) for n_series in SIZES for devices in PROCESSES]
    runs: dict[tuple[int, int], list[dict]] = {case: [] for case in cases}
    # Run after run over every case, not a case's runs back to back: a change of load from
    # other jobs on the shared machine then falls on every case alike.
    for run in range(args.runs):
        for n_series, devices in cases:
            runs[n_series, devices].append(measure_once(n_series, devices, args))
            last = runs[n_series, devices][-1]
            print(f"run {run + 1}: {n_series:5d} series x {devices} process(es): "
                  f"{last['windows_per_s']:,.0f} windows/s, peak {last['peak_rss_sum_mib']:.0f} "
                  f"MiB, {last['wall_s']:.0f} s", flush=True)
    rows = [medians(n_series, devices, runs[n_series, devices]) for n_series, devices in cases]
    report = {"benchmark": "universe training", "runs": args.runs, "days": args.days,
              "steps": args.steps, "warmup_steps": WARMUP_STEPS,
              "command": " ".join(["python", "benchmarks/bench_universe_training.py",
                                   *map(shlex.quote, sys.argv[1:])]),
              "machine": machine(), "load_average": [load_start[0], os.getloadavg()[0]],
              "load_average_1_5_15": {"start": load_start, "end": os.getloadavg()},
              "wall_s": time.perf_counter() - begin, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "universe_training_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "universe_training_cpu.md").write_text(markdown(report))
    print(markdown(report))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--days", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps per process, the first {WARMUP_STEPS} not timed")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".bench")
    # Worker mode: one measurement (see the module docstring); the orchestrator passes these.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--series", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
