"""A search space: conf/hparams_search/<name>.yaml read into typed objects, checked against the
training schema before anything starts, sampled by an Optuna trial into Hydra overrides.

    objective: val/loss            # a validation metric: the test split never steers a search
    direction: minimize
    n_trials: 12                   # the budget: complete + pruned trials, over every worker
    sampler: {name: tpe, seed: 42}
    pruner: {name: median}
    overrides: [trainer.max_epochs=8]   # the training every trial starts from
    params:
      model.hidden_size: {int: [8, 64], log: true}
      optim.lr: {float: [1.0e-3, 3.0e-2], log: true}
      model.name: {categorical: [lstm, gru]}

Every bound and every choice is composed into a training config and put through the schema's
own rules (pipeline.config.check), so a range the training would refuse is refused here, in one
line, before a study or a run exists.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.cli import CONF_DIR, load_config
from pipeline.config import (
    TASK_METRICS,
    TrainConfig,
    describe_omegaconf_error,
    schema_keys,
    unknown_key_message,
)
from pipeline.errors import ConfigError

SEARCH_DIR = CONF_DIR / "hparams_search"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "successive_halving", "none")
DIRECTIONS = ("minimize", "maximize")
KINDS = ("int", "float", "categorical")
# What a trial may not vary: where its run goes (the parent and its children share one
# experiment and store), and the data (another data set is another study).
FIXED_PREFIXES = ("tracking.", "data.name", "data.source", "trainer.resume", "trainer.checkpoint_dir")
FIXED_GROUPS = ("data", "tracking", "experiment")
SEARCHABLE_GROUPS = ("model", "trainer")


@dataclass
class SamplerConfig:
    name: str = "tpe"
    seed: int | None = 42
    n_startup_trials: int = 5  # TPE: random trials before it models the space


@dataclass
class PrunerConfig:
    name: str = "median"
    n_startup_trials: int = 3  # median: trials that finish before any is pruned
    n_warmup_steps: int = 1  # median: epochs a trial runs before it can be pruned
    min_resource: int = 1  # successive halving: epochs before the first rung
    reduction_factor: int = 3  # successive halving: 1 in this many trials goes on at each rung


@dataclass
class SearchConfig:
    """One study: what it optimises, how, for how long, over which keys."""

    study_name: str | None = None  # null: the file's name
    objective: str = "val/loss"
    direction: str = "minimize"
    n_trials: int = 10
    timeout: float | None = None  # seconds this worker starts new trials for (null: no limit)
    storage: str | None = None  # null: a journal file beside mlflow.db (storage.py)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    overrides: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One searched key: an int or float range (optionally log-scaled) or a list of choices."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values whose acceptance by the schema vouches for the whole range."""
        return [self.low, self.high] if self.kind != "categorical" else list(self.choices)

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"categorical {list(self.choices)}"
        return f"{self.kind} [{self.low}, {self.high}]{' log' if self.log else ''}"


@dataclass(frozen=True)
class SearchSpace:
    """A checked study definition (what runner.py works from)."""

    name: str  # the file's stem (hparams_search=<name>)
    source: Path
    config: SearchConfig
    params: tuple[Param, ...]
    base_overrides: tuple[str, ...]  # the file's overrides, then the command line's

    @property
    def study_name(self) -> str:
        return self.config.study_name or self.name

    def sample(self, trial) -> list[str]:
        """The trial's overrides (Hydra syntax), in the space's order."""
        return [override(p.key, p.suggest(trial)) for p in self.params]

    def digest(self) -> str:
        """Names what makes two studies comparable: objective, direction, parameters and the
        training they start from. The budget, sampler and pruner may change between restarts."""
        body = {"objective": self.config.objective, "direction": self.config.direction,
                "params": [p.describe() + f" {p.key}" for p in self.params],
                "overrides": list(self.base_overrides)}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def training_overrides(self, sampled: Sequence[str] = ()) -> list[str]:
        return [*self.base_overrides, *sampled]


def override(key: str, value: Any) -> str:
    """`key=value` as Hydra parses it back to the same value."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    return f"{key}={text}"


# --- reading ---------------------------------------------------------------------------------------


def search_options() -> list[str]:
    return sorted(p.stem for p in SEARCH_DIR.glob("*.yaml"))


def search_file(name: str) -> Path:
    """conf/hparams_search/<name>.yaml, or a YAML file of one's own (a path ending in .yaml)."""
    own = Path(name)
    path = own if own.suffix in (".yaml", ".yml") else SEARCH_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"hparams_search={name!r}: no such search space in {SEARCH_DIR} (nor a "
                          f"YAML file of that name); choose one of: {', '.join(search_options())}")
    return path.resolve()


def _where(path: Path) -> str:
    """How messages name the file: relative to the repository when it is one of conf/'s."""
    return str(path.relative_to(CONF_DIR.parent)) if path.is_relative_to(CONF_DIR.parent) else str(path)


def read_search_config(name: str, settings: Sequence[str] = ()) -> tuple[Path, SearchConfig]:
    """conf/hparams_search/<name>.yaml with `hparams_search.<key>=value` settings from the
    command line applied, typed by SearchConfig (unknown keys and wrong types refused)."""
    path = search_file(name)
    where = _where(path)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SearchConfig), OmegaConf.load(path))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {describe_omegaconf_error(exc)}") from None
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(settings)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"hparams_search.{describe_omegaconf_error(exc)}") from None
    return path, OmegaConf.to_object(merged)


def load_search_space(name: str, settings: Sequence[str] = (), extra_overrides: Sequence[str] = ()
                      ) -> tuple[SearchSpace, TrainConfig]:
    """The checked space and the base training config its trials start from."""
    path, config = read_search_config(name, settings)
    where = _where(path)
    base_overrides = (*config.overrides, *extra_overrides)
    base = load_config("train", base_overrides)
    check_settings(config, base, where)
    params = tuple(parse_param(key, spec, where) for key, spec in config.params.items())
    if not params:
        raise ConfigError(f"{where}: params is empty; name at least one key to search, e.g. "
                          "model.hidden_size: {int: [16, 128], log: true}")
    for param in params:
        check_against_schema(param, base_overrides, where)
    return SearchSpace(path.stem, path, config, params, tuple(base_overrides)), base


def check_settings(config: SearchConfig, base: TrainConfig, where: str) -> None:
    def refuse(key: str, value: Any, why: str) -> None:
        raise ConfigError(f"{where}: {key}={value!r}: {why}")

    if config.direction not in DIRECTIONS:
        refuse("direction", config.direction, f"must be one of {', '.join(DIRECTIONS)}")
    expected = objective_direction(config.objective, base.data.task, where)
    if config.direction != expected:
        refuse("direction", config.direction, f"{config.objective} improves as it goes "
               f"{'down' if expected == 'minimize' else 'up'}: use direction: {expected}")
    if config.n_trials < 1:
        refuse("n_trials", config.n_trials, "must be >= 1")
    if config.timeout is not None and config.timeout <= 0:
        refuse("timeout", config.timeout, "must be > 0 seconds (or null)")
    if config.sampler.name not in SAMPLERS:
        refuse("sampler.name", config.sampler.name, f"must be one of {', '.join(SAMPLERS)}")
    if config.sampler.n_startup_trials < 0:
        refuse("sampler.n_startup_trials", config.sampler.n_startup_trials, "must be >= 0")
    if config.pruner.name not in PRUNERS:
        refuse("pruner.name", config.pruner.name, f"must be one of {', '.join(PRUNERS)}")
    for key in ("n_startup_trials", "n_warmup_steps"):
        if getattr(config.pruner, key) < 0:
            refuse(f"pruner.{key}", getattr(config.pruner, key), "must be >= 0")
    if config.pruner.min_resource < 1:
        refuse("pruner.min_resource", config.pruner.min_resource, "must be >= 1 epoch")
    if config.pruner.reduction_factor < 2:
        refuse("pruner.reduction_factor", config.pruner.reduction_factor, "must be >= 2")


def objective_direction(objective: str, task: str, where: str) -> str:
    """val/loss or val/<one of the task's metrics>; its better direction."""
    if not objective.startswith("val/"):
        raise ConfigError(f"{where}: objective={objective!r}: must be a validation metric (val/...); "
                          "the test split is kept for the final, honest score")
    metric = objective.removeprefix("val/")
    known = {"loss": "minimize", **TASK_METRICS[task]}
    if metric not in known:
        raise ConfigError(f"{where}: objective={objective!r}: not a validation metric of a {task} "
                          f"task; choose one of {', '.join('val/' + m for m in known)}")
    return known[metric]


def parse_param(key: str, spec: Any, where: str) -> Param:
    at = f"{where}: params.{key}"
    check_key(key, at)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{at}: {spec!r} is not a range; write e.g. {{int: [16, 128]}}, "
                          "{float: [0.001, 0.1], log: true} or {categorical: [lstm, gru]}")
    kinds = [k for k in KINDS if k in spec]
    extra = sorted(set(spec) - {*KINDS, "log"})
    if len(kinds) != 1 or extra:
        raise ConfigError(f"{at}: needs exactly one of int, float, categorical (and optionally log); "
                          f"got {', '.join(map(str, spec))}")
    kind, log = kinds[0], spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{at}: log={log!r} must be true or false")
    if kind == "categorical":
        return categorical_param(key, spec[kind], log, at)
    return range_param(key, kind, spec[kind], log, at)


def check_key(key: str, at: str) -> None:
    if key in FIXED_GROUPS or any(key == p.rstrip(".") or key.startswith(p) for p in FIXED_PREFIXES):
        raise ConfigError(f"{at}: a trial cannot vary {key}: every trial of a study writes to one "
                          "experiment and trains on one data set")
    if key in SEARCHABLE_GROUPS or key in set(schema_keys()):
        return
    raise ConfigError(f"{at}: {unknown_key_message(key, why='not a config key')}")


def categorical_param(key: str, choices: Any, log: bool, at: str) -> Param:
    if log:
        raise ConfigError(f"{at}: log applies to int and float ranges, not to categorical")
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{at}: categorical={choices!r}: must be a non-empty list of choices")
    if any(isinstance(c, list | dict) for c in choices):
        raise ConfigError(f"{at}: categorical choices must be plain values (str, int, float, bool, null)")
    if len({json.dumps(c) for c in choices}) != len(choices):
        raise ConfigError(f"{at}: categorical={choices!r}: names a choice twice")
    return Param(key, "categorical", choices=tuple(choices))


def range_param(key: str, kind: str, bounds: Any, log: bool, at: str) -> Param:
    numeric = (isinstance(bounds, list) and len(bounds) == 2
               and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds))
    if not numeric:
        raise ConfigError(f"{at}: {kind}={bounds!r}: must be [low, high], two numbers")
    low, high = bounds
    if kind == "int" and not all(float(b).is_integer() for b in bounds):
        raise ConfigError(f"{at}: int={bounds!r}: an int range needs whole-number bounds")
    if not all(math.isfinite(b) for b in bounds):
        raise ConfigError(f"{at}: {kind}={bounds!r}: bounds must be finite")
    if low >= high:
        raise ConfigError(f"{at}: {kind}={bounds!r}: empty range: low must be below high")
    if log and low <= 0:
        raise ConfigError(f"{at}: {kind}={bounds!r} with log: true needs low > 0")
    if kind == "int":
        low, high = int(low), int(high)
    else:
        low, high = float(low), float(high)
    return Param(key, kind, low, high, log)


def check_against_schema(param: Param, base_overrides: Sequence[str], where: str) -> None:
    """Each bound or choice, composed into the training config, must pass the schema's checks.
    A range is checked at its ends: the schema's rules are bounds, so the inside follows."""
    for value in param.extremes():
        try:
            load_config("train", [*base_overrides, override(param.key, value)])
        except ConfigError as exc:
            raise ConfigError(f"{where}: params.{param.key}: {param.describe()} reaches {value!r}, "
                              f"which the training refuses: {exc}") from None
