"""`make experiments`: every study in conf/experiment/ x its variants, then a pass/fail table.

    python -m pipeline.experiments [experiments.mode=quick|full] [experiments.studies=[a,b]]
                                   [experiments.variants=[x,y]] [any override for every run]

full: as configured, for the report; each study's declared bars (runner.expect) are checked and
a run that misses one fails the command. quick: each study's `runner.quick` overrides (a couple
of epochs, for CI) into a separate store (.reports/quick/, ignored by git), bars not checked.
Only data that cannot be had here (the stock study offline, with no cache) is a skip; any other
error is a failure, and the command exits 1 after running the rest.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.cli import CONF_DIR, group_options, load_config, run_command
from pipeline.config import TrainConfig
from pipeline.errors import DataUnavailable, PipelineError

QUICK_STORE = ".reports/quick"
EXPERIMENTS_KEYS = ("experiments.", "experiments=")


@dataclass
class Outcome:
    study: str
    variant: str
    status: str  # passed | failed | done (quick: no bar checked) | skipped (data not available here)
    detail: str
    seconds: float


def quick_store_overrides(overrides: Sequence[str]) -> list[str]:
    """Quick runs go to their own store unless the command line names one."""
    if any(o.startswith(("tracking.uri=", "tracking.artifact_root=")) for o in overrides):
        return []
    return [f"tracking.uri=sqlite:///{QUICK_STORE}/mlflow.db", f"tracking.artifact_root={QUICK_STORE}/mlartifacts"]


def plan(cfg: TrainConfig, overrides: Sequence[str]) -> list[tuple[str, str, list[str]]]:
    """(study, variant, overrides) of every run to make, each checked before any runs."""
    options = cfg.experiments
    studies = options.studies or group_options(CONF_DIR, "experiment")
    passed_on = [o for o in overrides if not o.startswith(EXPERIMENTS_KEYS)]
    if options.mode == "quick":
        passed_on = [*quick_store_overrides(passed_on), *passed_on]
    runs = []
    for study in studies:
        runner = load_config("train", [f"experiment={study}"]).runner
        extra = list(runner.quick) if options.mode == "quick" else []
        for variant, variant_overrides in runner.variants.items():
            if options.variants is None or variant in options.variants:
                job = [f"experiment={study}", *variant_overrides, *extra, *passed_on,
                       "trainer.progress_bar=false", "trainer.model_summary=false"]
                load_config("train", job)  # a bad override fails now, not after hours of studies
                runs.append((study, variant, job))
    return runs


STUDY_VARIANT_TAG = "study_variant"


def run_one(study: str, variant: str, overrides: list[str], mode: str) -> Outcome:
    from pipeline.training import train  # lazy: Lightning loads after every run's config passed

    start = time.perf_counter()
    cfg = load_config("train", overrides)
    try:
        # The study's own name for the run (e.g. gru-quantile): the model's label (the variant
        # tag, seq2seq-gru) does not tell a study's point and quantile runs of one cell apart.
        result = train(cfg, tags={STUDY_VARIANT_TAG: variant})
    except DataUnavailable as exc:  # data that cannot be had here: say so, go on with the rest
        return Outcome(study, variant, "skipped", str(exc), time.perf_counter() - start)
    except PipelineError as exc:
        return Outcome(study, variant, "failed", str(exc), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    bars = [e for e in cfg.runner.expect if e.applies_to(variant)]
    if mode == "quick" or not bars:
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(result.test_metrics.items())[:4])
        return Outcome(study, variant, "done", f"{result.run_name}: {shown}", seconds)
    missed = [e for e in bars if not e.met_by(result.test_metrics.get(e.metric))]
    text = "; ".join(f"{e.describe()}: {_value(result.test_metrics.get(e.metric))}" for e in bars)
    return Outcome(study, variant, "failed" if missed else "passed", f"{result.run_name}: {text}", seconds)


def _value(value: float | None) -> str:
    return "missing" if value is None else f"{value:.4g}"


def outcome_table(outcomes: Sequence[Outcome]) -> str:
    lines = [f"{'study':16} {'variant':10} {'status':8} {'seconds':>7}  result"]
    lines += [f"{o.study:16} {o.variant:10} {o.status:8} {o.seconds:7.1f}  {o.detail}" for o in outcomes]
    return "\n".join(lines)


def run_studies(cfg: TrainConfig, overrides: list[str]) -> None:
    outcomes = []
    for study, variant, job in plan(cfg, overrides):
        print(f"== {study} / {variant} ({cfg.experiments.mode})", flush=True)
        outcomes.append(run_one(study, variant, job, cfg.experiments.mode))
    print("\n" + outcome_table(outcomes), flush=True)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        print(f"error: {len(failed)} of {len(outcomes)} runs failed", file=sys.stderr, flush=True)
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("experiments", run_studies, argv, with_overrides=True)


if __name__ == "__main__":
    main()
