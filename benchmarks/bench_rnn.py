"""Speed of the fused peephole/coupled LSTMs against torch's RNNs and autograd references.

Usage: python benchmarks/bench_rnn.py [--device cpu|cuda] [--repeats 7] [--runs 3] [--out DIR]

Rows, at each of three shapes on CPU (one shape, in float32 and bfloat16, on CUDA):

* ``torch.nn.LSTM`` (the baseline of every ratio; oneDNN on CPU, cuDNN on CUDA),
  ``torch.nn.GRU``, ``torch.nn.RNN``;
* ``PeepholeLSTM``, ``CoupledLSTM``: this project's kernels, once with the time loops in C++
  (``PIPELINE_FUSED_BACKEND=cpp``, CPU only) and once with them in PyTorch ops (``python``);
* autograd references, on the fused modules' own parameters and checked to give their output
  before they are timed: the same cell as an eager per-step loop, once with the input matmul
  inside the loop and once hoisted out of it (one matmul for all steps), and the hoisted loop
  with its step function ``torch.compile``'d.

Each row has the median over ``--repeats`` timed calls after warm-up of the forward pass under
``no_grad`` and of forward+backward, and their ratio to ``torch.nn.LSTM`` timed in the same
round.  Rows are timed round-robin (one call of each per round) so that load from other
processes affects all of them alike.  The whole measurement is repeated ``--runs`` times; the
tables give the median over runs and the min-max range of the ratios.  References are also
compared with their fused counterpart: the hand-written backward is only worth keeping if no
autograd reference comes within 10% of it.

Results go to ``<out>/rnn_<device>.json`` and ``.md``; ``--out`` defaults to ``.bench/`` at the
repository root, a scratch folder, so that running the benchmark leaves the repository clean.
Pass ``--out benchmarks/results`` to update the recorded results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.models import _fused_ext
from pipeline.models.fused_lstm import CoupledLSTM, PeepholeLSTM

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / ".bench"

# (batch, steps, inputs, hidden); the second is the default training shape.
SHAPES = ((64, 64, 8, 64), (32, 40, 1, 32), (128, 128, 16, 128))
CUDA_SHAPES = ((256, 128, 16, 128),)
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.bfloat16)}
WARMUP = 2  # calls per row and pass before timing; torch.compile compiles in the first
BASELINE = "torch.nn.LSTM"
WITHIN = 1.10  # a reference "matches" the fused kernel at or below this time ratio
# References must reproduce the fused output before they are timed; bfloat16 keeps 8 bits.
MATCH_ATOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


# --- autograd references ------------------------------------------------------


def peephole_step(xz, h, c, w_hh_t, p_i, p_f, p_o):
    """One PeepholeLSTM step (its docstring's equations); ``xz`` is W_ih x_t + biases."""
    z_i, z_f, z_g, z_o = torch.addmm(xz, h, w_hh_t).chunk(4, dim=1)
    i = torch.sigmoid(z_i + p_i * c)
    f = torch.sigmoid(z_f + p_f * c)
    c = f * c + i * torch.tanh(z_g)
    o = torch.sigmoid(z_o + p_o * c)
    return o * torch.tanh(c), c


def coupled_step(xz, h, c, w_hh_t):
    """One CoupledLSTM step (its docstring's equations); ``xz`` is W_ih x_t + biases."""
    z_f, z_g, z_o = torch.addmm(xz, h, w_hh_t).chunk(3, dim=1)
    f = torch.sigmoid(z_f)
    c = torch.lerp(torch.tanh(z_g), c, f)  # f*c + (1-f)*g in one op
    return torch.sigmoid(z_o) * torch.tanh(c), c


class AutogradLoop(nn.Module):
    """A fused module's cell as a per-step Python loop in autograd, on the same parameters."""

    def __init__(self, fused: PeepholeLSTM | CoupledLSTM, step: Callable, hoist_input: bool):
        super().__init__()
        self.fused = fused  # a submodule, so that zero_grad reaches the shared parameters
        self.step = step
        self.hoist_input = hoist_input

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        m = self.fused
        peephole = getattr(m, "weight_peephole_l0", None)
        peepholes = () if peephole is None else peephole.unbind(0)
        bias = m.bias_ih_l0 + m.bias_hh_l0
        batch, steps, _ = x.shape
        if self.hoist_input:
            xz = torch.addmm(bias, x.transpose(0, 1).reshape(steps * batch, -1), m.weight_ih_l0.t())
            # unbind rather than xz[t]: the backward of each indexing would add a zero-padded
            # gradient of the whole (T, B, G*H) tensor, making backward quadratic in T.
            xz_steps = xz.view(steps, batch, -1).unbind(0)
        else:
            xz_steps = (F.linear(x_t, m.weight_ih_l0, bias) for x_t in x.unbind(1))
        # A differentiable initial state makes every step see the same kind of inputs, so a
        # compiled step needs one graph for training rather than one for step 0 and one after.
        h = x.new_zeros(batch, m.hidden_size).requires_grad_(torch.is_grad_enabled())
        c = x.new_zeros(batch, m.hidden_size).requires_grad_(torch.is_grad_enabled())
        w_hh_t = m.weight_hh_l0.t()
        outputs = []
        for xz_t in xz_steps:
            h, c = self.step(xz_t, h, c, w_hh_t, *peepholes)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)


# Compiled once per process: dynamic shapes let one graph per grad mode serve all shapes.
COMPILED_STEPS = {
    "peephole": torch.compile(peephole_step, dynamic=True),
    "coupled": torch.compile(coupled_step, dynamic=True),
}


@dataclass
class Variant:
    name: str
    model: nn.Module
    counterpart: str | None = None  # the fused row an autograd reference reproduces
    backend: str | None = None  # PIPELINE_FUSED_BACKEND while this row runs


@contextlib.contextmanager
def fused_backend(value: str | None) -> Iterator[None]:
    """Run with ``PIPELINE_FUSED_BACKEND=value`` (unchanged for None)."""
    saved = os.environ.get(_fused_ext.ENV_VAR)
    if value is not None:
        os.environ[_fused_ext.ENV_VAR] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_fused_ext.ENV_VAR, None)
        else:
            os.environ[_fused_ext.ENV_VAR] = saved


def fused_backends(device: torch.device) -> dict[str, str]:
    """Row label -> backend: both loops on CPU; on CUDA only the PyTorch one applies."""
    labels = {"cpp": "C++ loop", "python": "PyTorch loop"}
    backends = ("cpp", "python") if device.type == "cpu" else ("python",)
    return {backend: labels[backend] for backend in backends}


def build_variants(inputs: int, hidden: int, device: torch.device) -> list[Variant]:
    peephole = PeepholeLSTM(inputs, hidden)
    with torch.no_grad():  # non-zero peepholes, so that the output check means something
        for name, param in peephole.named_parameters():
            if "peephole" in name:
                param.uniform_(-0.5, 0.5)
    coupled = CoupledLSTM(inputs, hidden)
    backends = fused_backends(device)
    variants = [
        Variant(BASELINE, nn.LSTM(inputs, hidden, batch_first=True)),
        Variant("torch.nn.GRU", nn.GRU(inputs, hidden, batch_first=True)),
        Variant("torch.nn.RNN", nn.RNN(inputs, hidden, batch_first=True)),
    ]
    for cls_name, model in (("PeepholeLSTM", peephole), ("CoupledLSTM", coupled)):
        for backend, label in backends.items():
            variants.append(Variant(f"{cls_name} (fused, {label})", model, backend=backend))
    # References are compared with the fastest fused loop of this device, listed first.
    first = next(iter(backends.values()))
    fused = {"peephole": (f"PeepholeLSTM (fused, {first})", peephole, peephole_step)}
    fused["coupled"] = (f"CoupledLSTM (fused, {first})", coupled, coupled_step)
    name, model, step = fused["peephole"]
    variants.append(
        Variant("eager peephole, input matmul per step", AutogradLoop(model, step, False), name)
    )
    for cell, (name, model, step) in fused.items():
        variants.append(
            Variant(f"eager {cell}, input matmul hoisted", AutogradLoop(model, step, True), name)
        )
    for cell, (name, model, _) in fused.items():
        compiled = AutogradLoop(model, COMPILED_STEPS[cell], True)
        variants.append(Variant(f"torch.compile'd {cell} step", compiled, name))
    return variants


# --- timing -----------------------------------------------------------------------


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


def failure_reason(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


class ReferenceMismatch(RuntimeError):
    """An autograd reference does not compute what its fused counterpart computes."""


def with_backend(variant: Variant, job: Callable[[], None]) -> Callable[[], None]:
    if variant.backend is None:
        return job

    def run() -> None:
        with fused_backend(variant.backend):
            job()

    return run


def check_and_warm_up(variant: Variant, x: Tensor, outputs: dict[str, Tensor]) -> float:
    """Check a reference's output against its counterpart, then warm up; return seconds taken.

    The first calls are where ``torch.compile`` compiles (and where the C++ loops are built,
    unless already cached), so their failures surface here.
    """
    start = time.perf_counter()
    with torch.no_grad(), fused_backend(variant.backend):
        outputs[variant.name] = variant.model(x)[0].float()
    if variant.counterpart is not None:
        diff = (outputs[variant.name] - outputs[variant.counterpart]).abs().max().item()
        if not diff <= MATCH_ATOL[x.dtype]:
            raise ReferenceMismatch(
                f"{variant.name} differs from {variant.counterpart} by {diff:.2e}: "
                "the reference does not compute the same function, so its timing means nothing"
            )
    for make in (forward_only, forward_backward):
        job = with_backend(variant, make(variant.model, x))
        for _ in range(WARMUP):
            job()
    return time.perf_counter() - start


def measure_shape(
    shape: tuple[int, int, int, int], repeats: int, device: torch.device, dtype: torch.dtype
) -> dict[str, dict]:
    """One run at one shape: per row medians, ratios, warm-up time, or the failure reason."""
    batch, steps, inputs, hidden = shape
    torch.manual_seed(0)
    variants = build_variants(inputs, hidden, device)
    for variant in variants:
        variant.model.to(device=device, dtype=dtype)
    x = torch.randn(batch, steps, inputs, device=device, dtype=dtype, requires_grad=True)

    rows: dict[str, dict] = {}
    outputs: dict[str, Tensor] = {}
    timed_variants = []
    for variant in variants:
        row: dict[str, object] = {}
        if variant.counterpart is not None:
            row["fused_counterpart"] = variant.counterpart
        rows[variant.name] = row
        try:
            row["warmup_s"] = check_and_warm_up(variant, x, outputs)
        except ReferenceMismatch:
            raise
        except Exception as error:  # torch.compile failing on this machine is a result
            row["error"] = failure_reason(error)
            continue
        timed_variants.append(variant)

    timed = make_timer(device)
    jobs = {
        (variant.name, kind): with_backend(variant, make(variant.model, x))
        for variant in timed_variants
        for kind, make in (("forward_ms", forward_only), ("fwd_bwd_ms", forward_backward))
    }
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, job in jobs.items():
            samples[key].append(timed(job))
    for (name, kind), values in samples.items():
        rows[name][kind] = statistics.median(values)
        # The fastest call is the one least disturbed by other processes: a second estimate
        # of each row's own cost on a shared machine.
        rows[name][kind.replace("_ms", "_min_ms")] = min(values)

    base = rows[BASELINE]
    for variant in timed_variants:
        row = rows[variant.name]
        row["ratio_forward"] = row["forward_ms"] / base["forward_ms"]
        row["ratio_fwd_bwd"] = row["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        if variant.counterpart is not None:
            fused = rows[variant.counterpart]
            row["vs_fused_forward"] = row["forward_ms"] / fused["forward_ms"]
            row["vs_fused_fwd_bwd"] = row["fwd_bwd_ms"] / fused["fwd_bwd_ms"]
    return rows


# --- summary ------------------------------------------------------------------------

SUMMED = ("forward_ms", "fwd_bwd_ms")
FASTEST = ("forward_min_ms", "fwd_bwd_min_ms")
RATIOS = ("ratio_forward", "ratio_fwd_bwd", "vs_fused_forward", "vs_fused_fwd_bwd")


def summarise(runs: list[dict[str, dict]]) -> dict[str, dict]:
    """Median over runs of every median and ratio, with the min-max range of the ratios; the
    fastest call over all runs; and the reference-to-fused ratio of those fastest calls."""
    summary: dict[str, dict] = {}
    for name, first in runs[0].items():
        row: dict[str, object] = {}
        if "fused_counterpart" in first:
            row["fused_counterpart"] = first["fused_counterpart"]
        summary[name] = row
        if "error" in first:
            row["error"] = first["error"]
            continue
        row["warmup_s_first_run"] = first["warmup_s"]
        for key in SUMMED + RATIOS:
            values = [run[name][key] for run in runs if key in run[name]]
            if not values:
                continue
            row[key] = statistics.median(values)
            if key in RATIOS:
                row[f"{key}_range"] = [min(values), max(values)]
        for key in FASTEST:
            row[key] = min(run[name][key] for run in runs if key in run[name])
    for row in summary.values():
        fused = summary.get(row.get("fused_counterpart"), {})
        if "fwd_bwd_min_ms" in row and "fwd_bwd_min_ms" in fused:
            row["vs_fused_fwd_bwd_fastest"] = row["fwd_bwd_min_ms"] / fused["fwd_bwd_min_ms"]
    return summary


def decide(shapes: list[dict]) -> dict[str, object]:
    """Whether any autograd reference comes within 10% of its fused counterpart everywhere.

    Judged by each statistic separately, and a reference qualifies if either says so: on a
    busy machine neither is exact, and the hand-written backward should stay only if it is
    clearly faster.
    """
    references = [name for name, row in shapes[0]["rows"].items() if "fused_counterpart" in row]
    verdicts = {}
    for name in references:
        by_statistic = {
            key: [entry["rows"][name].get(key) for entry in shapes]
            for key in ("vs_fused_fwd_bwd", "vs_fused_fwd_bwd_fastest")
        }
        within = any(
            all(r is not None and r <= WITHIN for r in ratios) for ratios in by_statistic.values()
        )
        verdicts[name] = {**by_statistic, "within_10_percent_at_all_shapes": within}
    replace = [name for name, v in verdicts.items() if v["within_10_percent_at_all_shapes"]]
    return {
        "rule": f"replace the hand-written backward if a reference's fwd+bwd time is at most "
        f"{WITHIN:.2f}x its fused counterpart's at every shape, by the median over runs or by "
        "the fastest call",
        "references": verdicts,
        "keep_hand_written_backward": not replace,
        "references_within_10_percent": replace,
    }


# --- report -------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    # Recorded because a busy shared machine inflates every timing.
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def machine_info(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1min_at_start": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def shape_label(shape: tuple[int, int, int, int], dtype: torch.dtype) -> str:
    label = "B={} T={} I={} H={}".format(*shape)
    return label if dtype == torch.float32 else f"{label} {str(dtype).removeprefix('torch.')}"


def ratio_cell(row: dict, key: str) -> str:
    if key not in row:
        return ""
    low, high = row[f"{key}_range"]
    return f"{row[key]:.2f} ({low:.2f}-{high:.2f})"


def markdown(report: dict) -> str:
    lines = [f"# RNN speed on {report['device']}", ""]
    lines += [f"- {key}: {value}" for key, value in report["machine"].items()]
    lines += [
        f"- {report['runs']} runs of {report['repeats']} timed calls each, after {WARMUP} "
        "warm-up calls; ms columns: median over runs of the per-run medians; ratio columns: "
        "median over runs (min-max over runs)",
        f"- torch.compile: {report['torch_compile']}",
        f"- C++ loops (pipeline/models/csrc/fused_lstm.cpp) built with: "
        f"{report['cpp_loop_build_flags']}",
        "",
        "| variant | shape | forward ms | fwd+bwd ms | fastest fwd+bwd ms | ratio fwd "
        "| ratio fwd+bwd | fwd+bwd vs fused |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in report["shapes"]:
        for name, row in entry["rows"].items():
            if "error" in row:
                lines.append(f"| {name} | {entry['shape']} | failed: {row['error']} | | | | | |")
                continue
            lines.append(
                f"| {name} | {entry['shape']} | {row['forward_ms']:.2f} | {row['fwd_bwd_ms']:.2f} "
                f"| {row['fwd_bwd_min_ms']:.2f} | {ratio_cell(row, 'ratio_forward')} | {ratio_cell(row, 'ratio_fwd_bwd')} "
                f"| {ratio_cell(row, 'vs_fused_fwd_bwd')} |"
            )
    decision = report["decision"]
    lines += ["", "## Hand-written backward or autograd?", "", f"Rule: {decision['rule']}.", ""]
    shape_columns = " | ".join(entry["shape"] for entry in report["shapes"])
    lines.append(
        "fwd+bwd time over the fused counterpart's: median over runs / fastest call over runs."
    )
    lines.append("")
    lines.append(f"| reference | {shape_columns} | within 10% |")
    lines.append("|---|" + "---:|" * len(report["shapes"]) + "---|")
    for name, verdict in decision["references"].items():
        pairs = zip(verdict["vs_fused_fwd_bwd"], verdict["vs_fused_fwd_bwd_fastest"], strict=True)
        cells = [
            "failed" if median is None else f"{median:.2f} / {fastest:.2f}"
            for median, fastest in pairs
        ]
        within = "yes" if verdict["within_10_percent_at_all_shapes"] else "no"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {within} |")
    lines.append("")
    if decision["keep_hand_written_backward"]:
        lines.append("No reference comes within 10%: the hand-written backward stays.")
    else:
        lines.append(
            "Within 10% at every shape, so they can replace the hand-written backward: "
            + ", ".join(decision["references_within_10_percent"])
        )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results folder (default: %(default)s)"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.runs < 1:
        parser.error("--repeats and --runs must be positive")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    machine = machine_info(device)
    started = time.perf_counter()
    shapes_here = SHAPES if device.type == "cpu" else CUDA_SHAPES
    cases = [(shape, dtype) for shape in shapes_here for dtype in DTYPES[device.type]]
    runs_by_case: dict[tuple, list] = {case: [] for case in cases}
    for _ in range(args.runs):
        for shape, dtype in cases:
            runs_by_case[shape, dtype].append(measure_shape(shape, args.repeats, device, dtype))
    machine["load_average_1min_at_end"] = load_average()
    shapes = [
        {"shape": shape_label(shape, dtype), "rows": summarise(runs), "runs": runs}
        for (shape, dtype), runs in runs_by_case.items()
    ]
    report = {
        "device": args.device,
        "repeats": args.repeats,
        "runs": args.runs,
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
        "torch_compile": "torch.compile(step, dynamic=True), default inductor backend and mode",
        "cpp_loop_build_flags": " ".join(_fused_ext.build_directory()[2]),
        "shapes": shapes,
        "decision": decide(shapes),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rnn_{args.device}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / f"rnn_{args.device}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
