"""Micro-benchmarks behind the small implementation choices in ``pipeline/models/fused_lstm.py``.

Usage: python benchmarks/bench_kernel_choices.py [--repeats 200] [--out DIR]

Each choice is timed as the alternatives it was made between, at the operand shapes of the
three ``bench_rnn.py`` shapes (peephole cell, 4 gate blocks), round-robin, median of
``--repeats`` calls:

* tanh(c) per step: ``torch.tanh`` or ``2 * sigmoid(2c) - 1`` (two ops);
* weight gradients over all steps: ``dz^T @ inputs`` or ``(inputs^T @ dz)^T``;
* input gradient: ``dz @ W_ih`` with W_ih as stored or copied to column-major;
* the C++ loop's recurrent matmul per step (``z_t.addmm_(h, W_hh^T)``): W_hh^T as a transposed
  view of the stored weight or as a contiguous copy (the PyTorch loop makes one anyway, since it
  scales the weight).

Results go to ``<out>/kernel_choices_cpu.json`` and ``.md`` (default ``.bench/``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = ((64, 64, 8, 64), (32, 40, 1, 32), (128, 128, 16, 128))  # as in bench_rnn.py


def alternatives(batch: int, steps: int, inputs: int, hidden: int) -> dict[str, dict]:
    """Choice name -> {option name: zero-argument callable}."""
    c, out = torch.randn(batch, hidden), torch.empty(batch, hidden)
    minus_one = torch.tensor(-1.0)
    dz = torch.randn(steps * batch, 4 * hidden)
    x, h_prev = torch.randn(steps * batch, inputs), torch.randn(steps * batch, hidden)
    w_ih = torch.randn(4 * hidden, inputs)
    w_hh = torch.randn(4 * hidden, hidden)
    w_hh_t = w_hh.t().contiguous()
    z, h = torch.randn(batch, 4 * hidden), torch.randn(batch, hidden)

    def tanh_via_sigmoid() -> None:
        torch.add(c, c, out=out).sigmoid_()
        torch.add(minus_one, out, alpha=2, out=out)

    return {
        "tanh(c), one step": {
            "torch.tanh": lambda: torch.tanh(c, out=out),
            "2*sigmoid(2c)-1": tanh_via_sigmoid,
        },
        "grad W_ih": {
            "dz^T @ x": lambda: dz.t() @ x,
            "(x^T @ dz)^T": lambda: (x.t() @ dz).t(),
        },
        "grad W_hh": {
            "dz^T @ h": lambda: dz.t() @ h_prev,
            "(h^T @ dz)^T": lambda: (h_prev.t() @ dz).t(),
        },
        "recurrent addmm, one step": {
            "W_hh.t() view": lambda: z.addmm_(h, w_hh.t()),
            "contiguous W_hh^T": lambda: z.addmm_(h, w_hh_t),
        },
        "grad x": {
            "dz @ W_ih": lambda: dz @ w_ih,
            "dz @ W_ih column-major": lambda: dz @ w_ih.t().contiguous().t(),
        },
    }


def median_us(jobs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for job in jobs.values():
        for _ in range(5):
            job()
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            samples[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".bench")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    torch.manual_seed(0)
    rows = []
    for shape in SHAPES:
        label = "B={} T={} I={} H={}".format(*shape)
        for choice, jobs in alternatives(*shape).items():
            times = median_us(jobs, args.repeats)
            first = next(iter(times.values()))
            rows.append({"choice": choice, "shape": label, "median_us": times, "first": first})
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}
    lines = [
        f"# fused_lstm implementation choices (torch {report['torch']}, "
        f"{report['threads']} threads, median of {args.repeats})",
        "",
        "| choice | shape | option: median us (ratio to the first) |",
        "|---|---|---|",
    ]
    for row in rows:
        cells = "; ".join(
            f"{name}: {us:.1f} ({us / row['first']:.2f})" for name, us in row["median_us"].items()
        )
        lines.append(f"| {row['choice']} | {row['shape']} | {cells} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernel_choices_cpu.json").write_text(json.dumps(report, indent=2) + "\n")
    table = "\n".join(lines) + "\n"
    (args.out / "kernel_choices_cpu.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
