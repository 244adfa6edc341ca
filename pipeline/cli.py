"""What every command line shares: one-line errors and early checks of Hydra group choices."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError

# The Hydra config tree every entry point composes from.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
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


def compose(config_name: str, overrides: list[str] | tuple[str, ...] = ()):
    """A config composed from conf/ exactly as the CLI would, for the stages called from Python
    (retrain, experiments, benchmarks, tests); a bad override becomes a one-line ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from pipeline.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


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
