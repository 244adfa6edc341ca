"""`make experiments`: every study in conf/experiment/ × its variants, then a summary table.

    python -m pipeline.experiments [--mode quick|full] [--studies a,b] [--variants x,y]

quick: each study's `runner.quick` overrides (a couple of epochs) for CI; full: as configured,
for the report. A study whose data cannot be had here (the stock study offline, with no cache)
is reported as skipped with its one-line reason; other failures stop with a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from pipeline.cli import CONF_DIR, compose, group_options, quiet_mlflow
from pipeline.errors import DataError, PipelineError


@dataclass
class Outcome:
    study: str
    variant: str
    status: str  # done | skipped | failed
    detail: str
    seconds: float


def compose_study(study: str, overrides: list[str]):
    return compose("train", [f"experiment={study}", *overrides])


def plan(mode: str, studies: list[str], variants: list[str] | None) -> list[tuple[str, str, list[str]]]:
    """(study, variant, overrides) for every run to make."""
    runs = []
    for study in studies:
        runner = compose_study(study, []).runner
        extra = list(runner.quick) if mode == "quick" else []
        for variant, overrides in runner.variants.items():
            if variants is None or variant in variants:
                runs.append((study, variant, [*overrides, *extra, "trainer.progress_bar=false",
                                              "trainer.model_summary=false"]))
    return runs


def run_one(study: str, variant: str, overrides: list[str], extra: list[str]) -> Outcome:
    from pipeline.train import train

    start = time.perf_counter()
    try:
        result = train(compose_study(study, [*overrides, *extra]))
    except DataError as exc:  # data that cannot be had here: say so, go on with the rest
        return Outcome(study, variant, "skipped", str(exc), time.perf_counter() - start)
    metrics = {k.removeprefix("test/"): v for k, v in result.test_metrics.items()}
    shown = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("mse", "exact_match", "mase", "mase_seasonal_naive")
                      if k in metrics)
    return Outcome(study, variant, "done", f"{result.run_name}: {shown}", time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the studies in conf/experiment/.")
    parser.add_argument("--mode", choices=("quick", "full"), default="full")
    parser.add_argument("--studies", default=None, help="comma-separated (default: all)")
    parser.add_argument("--variants", default=None, help="comma-separated (default: each study's list)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run")
    args = parser.parse_args(argv)
    quiet_mlflow()
    studies = args.studies.split(",") if args.studies else group_options(CONF_DIR, "experiment")
    variants = args.variants.split(",") if args.variants else None
    outcomes = []
    try:
        for study, variant, overrides in plan(args.mode, studies, variants):
            print(f"== {study} / {variant} ({args.mode})", flush=True)
            outcomes.append(run_one(study, variant, overrides, args.overrides))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\nstudy            variant    status   seconds  result")
    for o in outcomes:
        print(f"{o.study:16} {o.variant:10} {o.status:8} {o.seconds:7.1f}  {o.detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
