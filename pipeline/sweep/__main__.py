"""`make sweep`: python -m pipeline.sweep [hparams_search=<name>] [hparams_search.<key>=value ...]
[training overrides ...]

    make sweep ARGS="hparams_search=sine"
    make sweep ARGS="hparams_search=sine hparams_search.n_trials=20 model=gru"
    make sweep ARGS="hparams_search=stock_close hparams_search.storage=postgresql+psycopg2://u:pw@db/optuna"

`hparams_search=` picks conf/hparams_search/<name>.yaml (default: sine); `hparams_search.<key>=`
sets one of its keys (n_trials, timeout, storage, study_name, sampler.seed, pruner.name, ...);
everything else is a training override, added after the file's own `overrides`. Everything is
checked before the study, a run or the training stack exists: a refusal is one line, exit 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipeline.cli import MULTIRUN_FLAGS, configure_logging, exit_on_pipeline_error, quiet_mlflow
from pipeline.errors import ConfigError

DEFAULT_SEARCH = "sine"
GROUP = "hparams_search"


def split_args(argv: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """(search space name, its settings, training overrides)."""
    search, settings, overrides = DEFAULT_SEARCH, [], []
    for arg in argv:
        if arg in MULTIRUN_FLAGS:
            raise ConfigError(f"{arg}: a sweep runs its trials itself; drop -m and list the ranges "
                              f"in conf/{GROUP}/<name>.yaml")
        key, sep, value = arg.partition("=")
        if key == GROUP and sep:
            search = value
        elif key.startswith(f"{GROUP}.") and sep:
            settings.append(f"{key.removeprefix(GROUP + '.')}={value}")
        else:
            overrides.append(arg)
    return search, settings, overrides


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_mlflow()
    configure_logging()
    with exit_on_pipeline_error():
        search, settings, overrides = split_args(argv)
        from pipeline.sweep.runner import run_sweep, summary_lines

        report = run_sweep(search, settings, overrides)
        if report is not None:  # None on DDP ranks other than zero
            print("\n".join(summary_lines(report)), flush=True)


if __name__ == "__main__":
    main()
