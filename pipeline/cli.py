"""What every command line shares: one-line errors and early checks of Hydra group choices."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError

GROUPS = ("data", "model", "trainer", "tracking", "experiment")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


@contextmanager
def exit_on_pipeline_error() -> Iterator[None]:
    """PipelineError -> one line on stderr and exit 2 (SystemExit passes through Hydra untouched)."""
    try:
        yield
    except PipelineError as exc:
        from pipeline.tracking.secrets import scrub_text

        fail(scrub_text(str(exc)), exc.exit_code)


def quiet_mlflow() -> None:
    """No per-file download progress bars in our command-line output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def check_group_choices(argv: list[str], conf_dir: Path) -> None:
    """`data=nope` -> one line listing the choices, instead of Hydra's multi-line report."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value in ("", "null"):
            continue
        options = group_options(conf_dir, key)
        for choice in value.split(","):  # multirun: model=lstm,gru
            if choice not in options:
                fail(f"{key}={choice!r} is not a known {key} config; choose one of: {', '.join(options)}")
