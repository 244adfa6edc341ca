"""`make retrain`: python -m pipeline.retrain [overrides] (make retrain ARGS="data=stock").

Fetch once, train every variant of retrain.variants, score them on the same test windows and
offer the best to @champion (pipeline.retraining); prints a table and writes a JSON summary.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.cli import run_command
from pipeline.config import TrainConfig


def retrain_and_report(cfg: TrainConfig, overrides: list[str]) -> None:
    # Lazy: the training stack (Lightning, ~5-7 s to import here) loads after the command line passed.
    from pipeline.retraining.stages import retrain
    from pipeline.retraining.table import summary_table

    summary = retrain(overrides)
    print(summary_table(summary), flush=True)
    print(f"summary: {summary.summary_file}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("retrain", retrain_and_report, argv, with_overrides=True)


if __name__ == "__main__":
    main()
