"""The one command-line style every entry point shares (train, fetch, promote, retrain,
experiments, report): Hydra overrides, checked against the schema, one-line errors.

    python -m pipeline.<command> [-m] [key=value ...]

Overrides are parsed with Hydra's own grammar, composed by Hydra with the schema in
pipeline.config (types, unknown keys), then checked by its rules; every config of a multirun
(`-m model=lstm,gru`) is checked before the first one runs. Any refusal is one line on stderr and
exit 2, before anything is fetched or written.
"""

from __future__ import annotations

import difflib
import itertools
import logging.config
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

# Importing pipeline.config registers the schema with Hydra's ConfigStore.
from pipeline.config import describe_omegaconf_error, load, schema_keys, unknown_key_message
from pipeline.errors import ConfigError, PipelineError
from pipeline.secrets import scrub_text

# The Hydra config tree every entry point composes from.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("data", "model", "trainer", "tracking", "experiment")
MULTIRUN_FLAGS = ("-m", "--multirun")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


# A refusal is one line: long enough to name the key, the value and the fix, never a dump.
MESSAGE_LIMIT = 600


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextmanager
def exit_on_pipeline_error() -> Iterator[None]:
    """PipelineError -> one line on stderr (scrubbed of secrets, capped) and its exit code."""
    try:
        yield
    except PipelineError as exc:
            fail(one_line(scrub_text(str(exc))), exc.exit_code)


def quiet_mlflow() -> None:
    """No per-file download progress bars, no INFO lines ("Creating initial MLflow database
    tables...") and no run links in our command-line output (MLflow reads these when imported)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's own "View run at <tracking URI>" links would print a URI's credentials; our
    # summary names the run and the store, scrubbed.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case MLflow is imported already


def configure_logging() -> None:
    """Console-only logging (conf/hydra/job_logging/console.yaml), the same for every command."""
    config = OmegaConf.load(CONF_DIR / "hydra" / "job_logging" / "console.yaml")
    logging.config.dictConfig(OmegaConf.to_container(config, resolve=True))


def group_options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


# --- overrides -------------------------------------------------------------------------------------


def parse_overrides(args: Sequence[str]) -> list[Any]:
    """Hydra's parser, one override at a time so a grammar error names the one at fault."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except HydraException as exc:
            reason = str(exc).splitlines()[0].strip()
            raise ConfigError(f"{arg!r} is not a valid override ({reason}); the form is key=value; "
                              "quote values holding spaces, commas or non-ASCII text, e.g. "
                              "\"data.date_column='日期'\"") from None
    return parsed


def _key(override: Any) -> str:
    return override.key_or_group


def check_group_choices(overrides: Sequence[Any], conf_dir: Path = CONF_DIR) -> None:
    """`data=nope` -> one line listing the choices."""
    for override in overrides:
        key = _key(override)
        if key not in GROUPS or override.is_delete():
            continue
        values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        options = group_options(conf_dir, key)
        for value in values:
            if value in ("null", "") or value in options:
                continue
            near = difflib.get_close_matches(value, options, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"{key}={value!r} is not a known {key} config; choose one of: "
                              f"{', '.join(options)}{hint}")


def check_added_keys(overrides: Sequence[Any]) -> None:
    """`+model.hiden_size=64` would be dropped silently by the typed config: refuse it. Only a
    source's params take new keys (and those are checked against the source's schema)."""
    known = set(schema_keys())
    for override in overrides:
        key = _key(override)
        if not (override.is_add() or override.is_force_add()) or key in GROUPS:
            continue
        if key.startswith("data.params.") or key in known:
            continue
        raise ConfigError(unknown_key_message(key))


def expand(overrides: Sequence[Any], multirun: bool) -> list[list[str]]:
    """The override lists of every job: one without -m, the cartesian product of sweeps with it."""
    axes: list[list[str]] = []
    for override in overrides:
        if not override.is_sweep_override():
            axes.append([override.input_line])
            continue
        if not multirun:
            raise ConfigError(f"{override.input_line}: several values run only as a multirun; add -m, "
                              f"e.g. python -m pipeline.train -m {override.input_line}")
        prefix = override.input_line[: len(override.input_line) - len(override.input_line.lstrip("+~"))]
        axes.append([f"{prefix}{override.key_or_group}={value}"
                     for value in override.sweep_string_iterator()])
    return [list(job) for job in itertools.product(*axes)] if axes else [[]]


# --- composing -------------------------------------------------------------------------------------


def compose(config_name: str, overrides: Sequence[str] = ()):
    """A config composed from conf/ with the schema (a DictConfig); any Hydra or OmegaConf
    refusal becomes a one-line ConfigError."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(describe_compose_error(exc)) from None
    except AssertionError:
        # Hydra asserts when an override reaches into a section this command has not got.
        keys = ", ".join(o.split("=", 1)[0] for o in overrides)
        raise ConfigError(f"{keys}: not a key of `{config_name}` (a section another command owns?)") from None


def describe_compose_error(exc: BaseException) -> str:
    cause = exc if isinstance(exc, OmegaConfBaseException) else exc.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return describe_omegaconf_error(cause)
    return " ".join(str(exc).split("\n")[0].split())


def load_config(config_name: str, overrides: Sequence[str] = ()):
    """Overrides -> composed -> typed and checked (pipeline.config.TrainConfig)."""
    parsed = parse_overrides(overrides)
    check_group_choices(parsed)
    check_added_keys(parsed)
    return load(compose(config_name, [_source_param(o) for o in overrides]))


def _source_param(override: str) -> str:
    """`data.params.encoding=gbk` sets a source parameter whether or not the data's YAML lists
    it (Hydra would ask for a `+`); pipeline.config checks it against the source's schema."""
    return f"++{override}" if override.startswith("data.params.") else override


def load_jobs(config_name: str, argv: Sequence[str]) -> list[tuple[list[str], Any]]:
    """(overrides, config) of every job a command line asks for (several with -m), all checked
    before any runs."""
    multirun = any(a in MULTIRUN_FLAGS for a in argv)
    args = [a for a in argv if a not in MULTIRUN_FLAGS]
    # load_config checks each job's overrides (every value of a sweep lands in some job)
    return [(job, load_config(config_name, job)) for job in expand(parse_overrides(args), multirun)]


def run_command(config_name: str, command: Callable[..., Any], argv: Sequence[str] | None = None,
                with_overrides: bool = False) -> None:
    """The body of every entry point: check the whole command line, then run `command(cfg)` per
    job (`command(cfg, overrides)` for stages that compose further configs from the overrides)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_mlflow()
    configure_logging()
    with exit_on_pipeline_error():
        jobs = load_jobs(config_name, argv)
        for number, (overrides, cfg) in enumerate(jobs):
            if len(jobs) > 1:
                print(f"== job {number + 1}/{len(jobs)}: {' '.join(overrides)}", flush=True)
            command(cfg, overrides) if with_overrides else command(cfg)
