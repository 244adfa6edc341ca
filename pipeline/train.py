"""`make train`: python -m pipeline.train [-m] [overrides] — one training per config (several with -m).

The command line is checked whole (pipeline.cli) before the training stack is imported: importing
Lightning alone takes about 5-7 s on a 2-core machine, and a bad value should be refused in one.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.cli import run_command
from pipeline.config import TrainConfig


def train_and_report(cfg: TrainConfig) -> None:
    from pipeline.training import summary_lines, train  # lazy: see the module docstring

    result = train(cfg)
    if result is not None:  # None on DDP workers: rank zero reports
        print("\n".join(summary_lines(result)), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    run_command("train", train_and_report, argv)


if __name__ == "__main__":
    main()
