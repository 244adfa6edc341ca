"""Speed of the fused peephole/coupled LSTMs against torch's built-in RNNs.

Usage: python benchmarks/bench_rnn.py [--device cpu|cuda] [--repeats 10] [--out benchmarks/results]

For every variant it measures the forward pass under ``no_grad`` and a
forward+backward pass, takes the median over ``--repeats`` runs after warm-up
and divides by ``torch.nn.LSTM`` measured in the same process.  Variants are
timed round-robin (one run of each per round) so that load from other
processes on a shared machine affects all of them alike.  Results go to
``<out>/rnn_<device>.json`` and ``<out>/rnn_<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.fused_lstm import CoupledLSTM, PeepholeLSTM  # noqa: E402

SHAPES = {
    "cpu": {"batch": 64, "steps": 64, "inputs": 8, "hidden": 64},
    "cuda": {"batch": 256, "steps": 128, "inputs": 8, "hidden": 128},
}
WARMUP = 3
BASELINE = "torch.nn.LSTM"


class EagerPeepholeLSTM(nn.Module):
    """Straightforward per-step peephole LSTM in eager autograd: the "before" picture."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.cell = nn.Linear(input_size + hidden_size, 4 * hidden_size)
        self.peephole = nn.Parameter(torch.zeros(3, hidden_size))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        batch = x.shape[0]
        h = x.new_zeros(batch, self.hidden_size)
        c = x.new_zeros(batch, self.hidden_size)
        outputs = []
        for x_t in x.unbind(1):
            z_i, z_f, z_g, z_o = self.cell(torch.cat((x_t, h), dim=1)).chunk(4, dim=1)
            i = torch.sigmoid(z_i + self.peephole[0] * c)
            f = torch.sigmoid(z_f + self.peephole[1] * c)
            c = f * c + i * torch.tanh(z_g)
            o = torch.sigmoid(z_o + self.peephole[2] * c)
            h = o * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


def build_variants(inputs: int, hidden: int) -> dict[str, nn.Module]:
    return {
        BASELINE: nn.LSTM(inputs, hidden, batch_first=True),
        "torch.nn.GRU": nn.GRU(inputs, hidden, batch_first=True),
        "torch.nn.RNN": nn.RNN(inputs, hidden, batch_first=True),
        "PeepholeLSTM (fused)": PeepholeLSTM(inputs, hidden),
        "CoupledLSTM (fused)": CoupledLSTM(inputs, hidden),
        "eager peephole loop": EagerPeepholeLSTM(inputs, hidden),
    }


def make_timer(device: torch.device) -> Callable[[Callable[[], None]], float]:
    """Return a function timing one call in milliseconds, synchronising CUDA."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], None]) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return (time.perf_counter() - start) * 1e3

    return timed


def forward_only(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def forward_backward(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        x.grad = None
        output, _ = model(x)
        output.sum().backward()

    return run


def measure(
    variants: dict[str, nn.Module], x: Tensor, repeats: int, device: torch.device
) -> dict[str, dict[str, float]]:
    """Median forward and forward+backward milliseconds per variant, timed round-robin."""
    timed = make_timer(device)
    jobs = {
        (name, kind): make(model, x)
        for name, model in variants.items()
        for kind, make in (("forward_ms", forward_only), ("fwd_bwd_ms", forward_backward))
    }
    for job in jobs.values():
        for _ in range(WARMUP):
            job()
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            samples[key].append(timed(job))
    results: dict[str, dict[str, float]] = {name: {} for name in variants}
    for (name, kind), values in samples.items():
        results[name][kind] = statistics.median(values)
    return results


def add_ratios(results: dict[str, dict[str, float]]) -> None:
    base = results[BASELINE]
    for row in results.values():
        row["ratio_forward"] = row["forward_ms"] / base["forward_ms"]
        row["ratio_fwd_bwd"] = row["fwd_bwd_ms"] / base["fwd_bwd_ms"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if hasattr(os, "getloadavg"):
        # Recorded because a busy shared machine inflates every timing.
        info["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def shape_label(shape: dict[str, int]) -> str:
    return "B={batch} T={steps} F={inputs} H={hidden}".format(**shape)


def markdown(report: dict) -> str:
    lines = [f"# RNN speed on {report['device']}", ""]
    lines += [f"- {key}: {value}" for key, value in report["machine"].items()]
    lines += [f"- repeats: {report['repeats']} (median, after {WARMUP} warm-up runs)", ""]
    lines.append(
        "| variant | device | shape | forward ms | fwd+bwd ms | ratio fwd | ratio fwd+bwd |"
    )
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for name, row in report["results"].items():
        lines.append(
            f"| {name} | {report['device']} | {report['shape']} | {row['forward_ms']:.2f} | "
            f"{row['fwd_bwd_ms']:.2f} | {row['ratio_forward']:.2f} | {row['ratio_fwd_bwd']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    shape = SHAPES[args.device]
    torch.manual_seed(0)
    variants = {
        name: model.to(device)
        for name, model in build_variants(shape["inputs"], shape["hidden"]).items()
    }
    x = torch.randn(
        shape["batch"], shape["steps"], shape["inputs"], device=device, requires_grad=True
    )
    results = measure(variants, x, args.repeats, device)
    add_ratios(results)
    report = {
        "device": args.device,
        "shape": shape_label(shape),
        "repeats": args.repeats,
        "machine": machine_info(device),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rnn_{args.device}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"rnn_{args.device}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
