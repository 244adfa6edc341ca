"""The config schema: every group as a dataclass, registered with Hydra's ConfigStore as the base of
conf/train.yaml, plus the range and cross-field rules, which run before anything is fetched or any
run is created.

Hydra checks types and unknown keys while it composes (a wrong type or a typo never reaches the
code); `check()` adds what a type cannot say (ranges, choices, rules across fields). Every entry
point reads the config once, through `load()`, into these objects: stages take them, never raw
`cfg` keys, and the defaults below are the only defaults (the YAML files keep what differs).
"""

from __future__ import annotations

import codecs
import difflib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.data.transforms import TARGET_TRANSFORMS
from pipeline.errors import ConfigError
from pipeline.models.backbones import BACKBONES
from pipeline.models.distributions import DEFAULT_QUANTILES, HEADS

# --- choices (one list each; messages and the README's reference read them from here) ---------

LAYOUTS = ("series", "samples", "universe")
# How a universe model tells its series apart (pipeline.models.network.SeriesEncoder).
SERIES_ENCODINGS = ("embedding", "onehot", "none")
# The sources of many series at once (data.layout=universe), and only those.
UNIVERSE_SOURCES = ("universe_synthetic", "universe_file", "universe_stock")
TASKS = ("regression", "classification")
MODES = ("sequence", "forecast")
SCALERS = ("standard", "minmax", "none")
FILLS = ("none", "ffill", "interpolate")
INIT_STATES = ("zeros", "learned")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")
TEST_CHECKPOINTS = ("best", "last")
EXPERIMENT_MODES = ("quick", "full")
# data=stock: auto is pro when TUSHARE_TOKEN is set, else baostock (token-free); legacy is tushare's
# get_k_data, kept selectable though it cannot run on pandas >= 2.
STOCK_APIS = ("auto", "pro", "baostock", "legacy")
# The metrics a task is scored with on any windows (pipeline.evaluate.score), and which way is
# better: promotion, retraining and sweeps rank on one of these. Run metrics that need a baseline
# (mase, persistence_*) can be a study's bar but not a ranking, since a champion is re-scored on
# the challenger's windows alone.
TASK_METRICS: dict[str, dict[str, str]] = {
    "regression": {"mse": "minimize", "mae": "minimize", "rmse": "minimize", "mape": "minimize"},
    "classification": {"accuracy": "maximize", "log_loss": "minimize", "exact_match": "maximize"},
}
# What a task ranks on when promotion.metric is null: a proper score for classification, since
# accuracy ties at 1.0 on easy tasks.
DEFAULT_METRIC = {"regression": "mse", "classification": "log_loss"}
# Interval scores a regression model with a non-point head (model.head) can also rank on
# (pipeline.intervals): both lower is better.
PROBABILISTIC_METRICS: dict[str, str] = {"crps": "minimize", "coverage_error": "minimize"}


# Interval metrics a study may set a bar on (runner.expect), beside the point ones: names of
# pipeline.intervals for the default levels.
STUDY_INTERVAL_METRICS = (*PROBABILISTIC_METRICS, "coverage_80", "width_80", "conformal_coverage_80",
                          "persistence_crps", "relative_crps")


# --- the schema ----------------------------------------------------------------------------------


@dataclass
class SplitConfig:
    """Series: fractions (train/val/test, adding up to 1) or dates (train_end/val_end, which win
    when set). Samples: the sample labels each split takes (a label or a list of labels)."""

    train: Any = 0.7
    val: Any = 0.15
    test: Any = 0.15
    train_end: str | None = None
    val_end: str | None = None


@dataclass
class DataConfig:
    """What to read and how it becomes windows.

    Args:
        name: names the experiment, the registered model and the cache slot.
        source: the source function (pipeline.data.sources) and the schema of `params`.
        params: the source's own settings (checked against that source's schema below).
        layout: series (one long series, split by time) | samples (independent samples) |
            universe (many series, one global model: pipeline.data.universe).
        task: regression | classification (0/1 targets, BCE loss).
        date_column: the column parsed into the index (null: the source's own index).
        date_format: strftime format of that column (null: inferred).
        inputs / targets: value columns fed to the model / predicted.
        mode: sequence (a target per input step) | forecast (`horizon` values after the window).
        lookback / horizon / stride: window length, steps ahead, step between window starts.
        burn_in: first steps of a sequence window left out of loss and metrics.
        season: period of the seasonal-naive baseline (null: no such baseline).
        scaler: standard | minmax | none, fit on the training rows only.
        target_transform: none | log_return | diff: the model learns the targets' changes from
            the previous row and its forecasts are turned back into levels (prices) from the
            window's last observed value; forecast mode, each target also an input.
        fill: none (a gap is an error) | ffill | interpolate.
        positive: true, false or a list of columns that must be > 0 (prices).
        cache_dir / offline / refresh: the fetch cache, training from it alone, refetching.
        min_windows: universe only: a series with fewer training windows than this (or no
            validation or test window) is dropped, and named in one warning line.
    """

    name: str = MISSING
    source: str = MISSING
    params: dict[str, Any] = field(default_factory=dict)
    layout: str = "series"
    task: str = "regression"
    date_column: str | None = None
    date_format: str | None = None
    inputs: list[str] = MISSING
    targets: list[str] = MISSING
    mode: str = "forecast"
    lookback: int = 10
    horizon: int = 1
    stride: int = 1
    burn_in: int = 0
    season: int | None = None
    split: SplitConfig = field(default_factory=SplitConfig)
    scaler: str = "standard"
    target_transform: str = "none"
    fill: str = "none"
    positive: Any = False
    batch_size: int = 32
    num_workers: int = 0
    pin_memory: bool = False
    shuffle: bool = True
    cache_dir: str = "${oc.env:PIPELINE_DATA_CACHE,data_cache}"
    offline: bool = False
    refresh: bool = False
    min_windows: int = 1


@dataclass
class ModelConfig:
    """The network.

    Args:
        name: lstm | gru | rnn | peephole | coupled | seq2seq.
        hidden_size: units per layer and direction.
        num_layers: stacked recurrent layers.
        dropout: between stacked layers, in [0, 1).
        bidirectional: read the window both ways (seq2seq: the encoder only).
        init_state: zeros | learned (a trained initial state).
        cell: seq2seq only: the recurrent cell of encoder and decoder.
        teacher_forcing: seq2seq only: probability of feeding the true previous value in training.
        recurrent_l2: L2 penalty on hidden-to-hidden weights.
        head: point | quantile (pinball loss) | gaussian | student_t (negative log-likelihood);
            the point forecast is always the median.
        quantiles: the levels a quantile head predicts and every non-point head reports:
            strictly increasing in (0, 1), with 0.5 among them.
        series_encoding: universe only: how the model is told which series a window is from:
            embedding (a learned vector of series_embedding_dim per series) | onehot | none.
        series_embedding_dim: the length of that learned vector.
    """

    name: str = "lstm"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    init_state: str = "zeros"
    cell: str | None = None
    teacher_forcing: float = 0.0
    recurrent_l2: float = 0.0
    head: str = "point"
    quantiles: list[float] = field(default_factory=lambda: list(DEFAULT_QUANTILES))
    series_encoding: str = "embedding"
    series_embedding_dim: int = 8


@dataclass
class TrainerConfig:
    """Lightning Trainer settings, plus resume and checkpoint placement.

    Args:
        resume: a checkpoint file or an MLflow run id to continue.
        checkpoint_dir: where checkpoints are staged (null: a temp dir; multi-node: a shared path).
        test_checkpoint: which checkpoint the test metrics come from: best (validation) | last.
        last_checkpoint_every_s: last.ckpt (what a stopped run resumes from) is rewritten at an
            epoch's end at most this often, and always after the final epoch; 0: every epoch.
            Short epochs then spend their time training rather than writing files.
    """

    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_epochs: int = 30
    precision: str = "32-true"
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 10
    early_stopping_patience: int = 8
    progress_bar: bool = True
    model_summary: bool = True
    deterministic: bool = False
    resume: str | None = None
    checkpoint_dir: str | None = None
    test_checkpoint: str = "best"
    last_checkpoint_every_s: float = 30.0


@dataclass
class TrackingConfig:
    uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlflow.db}"
    artifact_root: str | None = "mlartifacts"
    experiment: str = "${data.name}"
    registered_model: str = "${data.name}-forecaster"
    register: bool = True
    flush_every_s: float = 5.0
    # A tracking server that stops answering is waited for (metrics buffered, retried with
    # backoff) this long before the training stops with the local checkpoint named.
    retry_for_s: float = 300.0


@dataclass
class OptimConfig:
    lr: float = 0.01
    weight_decay: float = 0.0


@dataclass
class PromotionConfig:
    """Champion/challenger: the new version takes @champion only if it beats the current champion
    on `metric` over the same test windows (the metric's direction says which way is better)."""

    enabled: bool = True
    metric: str | None = None  # null: the task's default (DEFAULT_METRIC)
    version: int | None = None  # make promote: the version to consider (null: the latest)

    @property
    def direction(self) -> str:
        return metric_direction(self.metric)


@dataclass
class Expectation:
    """An acceptance bar of a study: `metric` (a run metric, e.g. test/mse) within [min, max]."""

    metric: str = MISSING
    min: float | None = None
    max: float | None = None
    variants: list[str] | None = None  # the variants the bar is for (null: every variant)

    def applies_to(self, variant: str) -> bool:
        return self.variants is None or variant in self.variants

    def met_by(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        bounds = [f">= {self.min:g}" if self.min is not None else "",
                  f"<= {self.max:g}" if self.max is not None else ""]
        return f"{self.metric} {' and '.join(b for b in bounds if b)}"


@dataclass
class RunnerConfig:
    """A study's runs (conf/experiment/): variants -> overrides, quick-mode overrides, bars."""

    variants: dict[str, list[str]] = field(default_factory=dict)
    quick: list[str] = field(default_factory=list)
    expect: list[Expectation] = field(default_factory=list)
    report_predictions: bool = False  # list each variant's predictions beside the truth in the report


@dataclass
class RetrainConfig:
    """`make retrain`: one training per variant, the best offered for promotion.

    Args:
        variants: model configs (conf/model/<name>.yaml) or backbone names to train.
        output_dir: where retrain_summary.json goes (null: a temp dir).
        max_mase: a candidate whose test MASE is not below this is never promoted (null: no gate).
    """

    variants: list[str] = field(default_factory=lambda: ["lstm", "gru", "peephole"])
    output_dir: str | None = None
    max_mase: float | None = 1.0


@dataclass
class ExperimentsConfig:
    """`make experiments`: which studies and variants, in which mode."""

    mode: str = "full"
    studies: list[str] | None = None
    variants: list[str] | None = None


@dataclass
class ReportConfig:
    """`make report`: full-mode runs go to reports/ (committed); quick-mode runs to an ignored folder."""

    mode: str = "full"
    output: str | None = None  # null: reports/studies.md (full) or .reports/quick/studies.md (quick)


@dataclass
class ServeConfig:
    """`make serve`: MLflow's scoring server over a registered model.

    Args:
        model: models:/<name>@<alias> or models:/<name>/<version> (null:
            models:/<tracking.registered_model>@champion).
        host: the address to bind; 127.0.0.1 keeps the server off the network.
        port: the TCP port. workers: uvicorn worker processes.
    """

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 5001
    workers: int = 1


@dataclass
class PredictConfig:
    """`make predict`: a file (or the configured series) scored by a registered model.

    Args:
        model: models:/<name>@<alias> or models:/<name>/<version> (null:
            models:/<tracking.registered_model>@champion).
        input: a CSV or Parquet file of recent rows, read like data=csv (null: the configured
            data source, as training reads it).
        output: the forecast file to write (.csv, or .parquet/.pq).
    """

    model: str | None = None
    input: str | None = None
    output: str = MISSING


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    seed: int = 42
    study: str | None = None  # set by experiment files: groups the runs of one study
    # Sections only some commands read; null elsewhere (and then not logged as params).
    runner: RunnerConfig | None = None
    retrain: RetrainConfig | None = None
    experiments: ExperimentsConfig | None = None
    report: ReportConfig | None = None
    serve: ServeConfig | None = None
    predict: PredictConfig | None = None


SCHEMA_NAME = "schema"
ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


def _file_stem(path: str | None, default: str) -> str:
    """data=csv names its experiment and registered model after the file: prices.csv -> prices."""
    return Path(str(path)).stem if path else default


OmegaConf.register_new_resolver("file_stem", _file_stem, replace=True)


# --- per-source params ---------------------------------------------------------------------------


@dataclass
class SineParams:
    points: int = 1000
    periods: float = 6.0
    noise: float = 0.0  # sd of gaussian noise on the input sin(t)
    target_noise: float = 0.0  # sd of gaussian noise on the target cos(t): what intervals cover
    seed: int = 0


@dataclass
class ToyParams:
    pass


@dataclass
class BinaryAddParams:
    bits: int = 8
    train_pairs: int = 2000
    val_pairs: int = 200
    test_pairs: int = 200
    seed: int = 0


@dataclass
class FileParams:
    """data=csv: your own CSV or Parquet file.

    Args:
        path: the file (relative to the working directory); .parquet/.pq are read as Parquet.
        sep: field separator. encoding: null = detect (charset-normalizer), else e.g. gbk, utf-8.
        thousands: thousands separator inside numbers ("1,234.5"), null for none.
    """

    path: str | None = None
    sep: str = ","
    encoding: str | None = None
    thousands: str | None = ","


@dataclass
class SstParams:
    column: str = "sst"


@dataclass
class Region:
    mean: float = MISSING
    annual: float = MISSING
    peak_month: int = MISSING
    enso: float = 1.0
    lag: int = 0


@dataclass
class SstSyntheticParams:
    start: str = "1950-01-01"
    months: int = 732
    seed: int = 0
    enso_periods_years: list[float] = field(default_factory=lambda: [3.7, 5.3])
    enso_amplitude: float = 1.0
    ar_coefficient: float = 0.7
    noise: float = 0.3
    regions: dict[str, Region] = field(default_factory=dict)


@dataclass
class StockParams:
    code: Any = "000001"  # a six-digit string; Any so an unquoted 000001 (the int 1) gets a hint
    index: bool = True
    ts_code: str | None = None
    start: str | None = "2019-01-01"
    end: str | None = None
    api: str = "auto"  # one of STOCK_APIS
    timeout: float = 30.0  # seconds, for the pro API's HTTP calls and baostock's socket
    page_rows: int = 5000


@dataclass
class UniverseSyntheticParams:
    """data=universe_synthetic: correlated random walks with regime changes (a fifth list late)."""

    n_series: int = 500
    days: int = 1500
    seed: int = 0
    correlation: float = 0.3
    regimes: int = 3
    start: str = "2015-01-05"


@dataclass
class UniverseFileParams:
    """data=universe_file: a long CSV or Parquet file, columns date, series and values."""

    path: str | None = None


@dataclass
class UniverseStockParams:
    """data=universe_stock: daily bars of many codes, fetched one at a time, cached per code.

    Args:
        codes: ts_codes (600000.SH) or six-digit codes; and/or
        index: an index whose members join them (tushare pro's index_weight, e.g. 000300.SH),
            as of members_on (null: today).
        attempts / backoff_s: calls per code when refused for the rate or unreachable, and the
            first wait between them (doubling).
    """

    codes: list[str] = field(default_factory=list)
    index: str | None = None
    members_on: str | None = None
    start: str | None = "2019-01-01"
    end: str | None = None
    api: str = "auto"
    timeout: float = 30.0
    page_rows: int = 5000
    attempts: int = 4
    backoff_s: float = 1.0


SOURCE_PARAMS: dict[str, type] = {
    "sine": SineParams, "toy": ToyParams, "binary_add": BinaryAddParams, "csv": FileParams,
    "sst": SstParams, "sst_synthetic": SstSyntheticParams, "stock": StockParams,
    "universe_synthetic": UniverseSyntheticParams, "universe_file": UniverseFileParams,
    "universe_stock": UniverseStockParams,
}


# --- loading ---------------------------------------------------------------------------------------


def load(cfg: Any) -> TrainConfig:
    """A composed config (DictConfig) -> checked, typed objects with every interpolation resolved.
    `data.params` comes back as the source's params with its defaults filled in."""
    if isinstance(cfg, TrainConfig):
        typed = cfg
    else:
        typed = _to_object(cfg)
    typed.data.params = source_params(typed.data.source, typed.data.params)
    if typed.promotion.metric is None and typed.data.task in DEFAULT_METRIC:
        typed.promotion.metric = DEFAULT_METRIC[typed.data.task]
    check(typed)
    return typed


def _to_object(cfg: Any) -> TrainConfig:
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc)) from None
    if not isinstance(typed, TrainConfig):
        raise ConfigError("the config is not built on the pipeline schema (conf/train.yaml's defaults "
                          "must start with `schema`)")
    return typed


def source_params(source: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The source's params checked against its schema, with its defaults filled in."""
    schema = SOURCE_PARAMS.get(source)
    if schema is None:
        raise ConfigError(f"data.source={source!r}: unknown source; choose one of "
                          f"{', '.join(sorted(SOURCE_PARAMS))}")
    given = dict(params or {})
    known = {f.name for f in fields(schema)}
    for key in given:
        if key not in known:
            raise ConfigError(unknown_key_message(f"data.params.{key}",
                                                  [f"data.params.{k}" for k in sorted(known)],
                                                  f"data={source} has no such parameter"))
    if source == "stock" and _six_digit_int(given.get("code")):
        given["code"] = str(given["code"])  # data.params.code=600519 reads as an int: no zeros lost
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), given)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(describe_omegaconf_error(exc, prefix="data.params.")) from None
    return _plain(asdict(typed))


def _six_digit_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100000 <= value <= 999999


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def tracking_store(tracking: TrackingConfig):
    """The configured store: the one way every command reaches MLflow (pipeline.tracking.store)."""
    from pipeline.tracking.store import open_store  # lazy: MLflow loads only when a store is used

    return open_store(tracking.uri, tracking.artifact_root, tracking.retry_for_s)


def metric_direction(metric: str) -> str:
    for metrics in (*TASK_METRICS.values(), PROBABILISTIC_METRICS):
        if metric in metrics:
            return metrics[metric]
    raise ConfigError(f"promotion.metric={metric!r}: unknown metric; choose one of "
                      f"{', '.join(m for ms in TASK_METRICS.values() for m in ms)}, "
                      f"{', '.join(PROBABILISTIC_METRICS)}")


def as_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain values (what MLflow records), without the sections this
    command does not use."""
    return {k: v for k, v in asdict(cfg).items() if v is not None or k == "study"}


# --- error messages --------------------------------------------------------------------------------


def schema_keys(schema: type = TrainConfig, prefix: str = "") -> Iterator[str]:
    """Every settable key of the schema, dotted (data.lookback, model.hidden_size, ...)."""
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        yield key
        inner = _dataclass_of(f.type)
        if inner is not None:
            yield from schema_keys(inner, f"{key}.")
    if schema is DataConfig:
        for params in SOURCE_PARAMS.values():
            for f in fields(params):
                yield f"{prefix}params.{f.name}"


def _dataclass_of(annotation: Any) -> type | None:
    if isinstance(annotation, str):
        annotation = annotation.split("|")[0].strip()
        return next((cls for cls in _SCHEMA_CLASSES if cls.__name__ == annotation), None)
    return annotation if is_dataclass(annotation) else None


_SCHEMA_CLASSES = (SplitConfig, DataConfig, ModelConfig, TrainerConfig, TrackingConfig, OptimConfig,
                   PromotionConfig, RunnerConfig, RetrainConfig, ExperimentsConfig, ReportConfig,
                   Expectation)


def unknown_key_message(key: str, known: Sequence[str] | None = None, why: str = "unknown key") -> str:
    known = list(dict.fromkeys(known if known is not None else schema_keys()))
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    hint = f"; did you mean {near[0]}?" if near else ""
    return f"{key}: {why}{hint}"


def describe_omegaconf_error(exc: OmegaConfBaseException, prefix: str = "") -> str:
    """OmegaConf's multi-line report -> `key=value: what is allowed` on one line."""
    key = f"{prefix}{exc.full_key}" if getattr(exc, "full_key", None) else prefix.rstrip(".")
    text = str(getattr(exc, "msg", None) or exc).splitlines()[0].strip()
    name = type(exc).__name__
    if name in ("ConfigAttributeError", "ConfigKeyError") and ("not in" in text or "struct" in text):
        return unknown_key_message(key)
    if name == "MissingMandatoryValue":
        return f"{key}: required, but not set"
    if "could not be converted to" in text or "Value" in text:
        return f"{key}: {_type_message(text)}"
    return f"{key}: {text}" if key else text


def _type_message(text: str) -> str:
    """"Value 'abc' of type 'str' could not be converted to Integer" -> "'abc' is not an integer"."""
    for marker, kind in (("Integer", "an integer"), ("Float", "a number"), ("Boolean", "true or false"),
                         ("String", "a string")):
        if text.endswith(marker):
            value = text.split("Value ", 1)[-1].split(" of type", 1)[0]
            return f"{value} is not {kind}"
    return text


# --- rules ---------------------------------------------------------------------------------------


def _require(ok: bool, key: str, value: Any, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {expectation}")


def _one_of(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(choices)}{hint}")


def _at_least(key: str, value: int | float, low: int | float) -> None:
    _require(value >= low, key, value, f"must be >= {low}")


def _names(key: str, value: Any) -> None:
    ok = isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)
    _require(bool(ok), key, value, "must be a non-empty list of column names, e.g. [close]")
    _require(len(set(value)) == len(value), key, value, "names a column twice")


def check(cfg: TrainConfig) -> None:
    """Ranges and cross-field rules; the first one broken is a ConfigError naming key and value."""
    check_data(cfg.data)
    check_model(cfg.model, cfg.data)
    check_trainer(cfg.trainer)
    check_tracking(cfg.tracking)
    _require(cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "must be > 0")
    _at_least("optim.weight_decay", cfg.optim.weight_decay, 0)
    check_promotion(cfg.promotion, cfg.data.task, cfg.model.head)
    if cfg.runner is not None:
        check_runner(cfg.runner, cfg.data.task)
    if cfg.retrain is not None:
        check_retrain(cfg.retrain)
    if cfg.experiments is not None:
        _one_of("experiments.mode", cfg.experiments.mode, EXPERIMENT_MODES)
    if cfg.report is not None:
        _one_of("report.mode", cfg.report.mode, EXPERIMENT_MODES)
    if cfg.serve is not None:
        check_serve(cfg.serve)
    if cfg.predict is not None:
        check_predict(cfg.predict)


def check_data(data: DataConfig) -> None:
    _require(bool(data.name.strip()), "data.name", data.name, "must not be empty")
    _one_of("data.layout", data.layout, LAYOUTS)
    _one_of("data.task", data.task, TASKS)
    _one_of("data.mode", data.mode, MODES)
    _one_of("data.scaler", data.scaler, SCALERS)
    check_target_transform(data)
    _one_of("data.fill", data.fill, FILLS)
    _names("data.inputs", data.inputs)
    _names("data.targets", data.targets)
    for key in ("lookback", "horizon", "stride", "batch_size"):
        _at_least(f"data.{key}", getattr(data, key), 1)
    _at_least("data.num_workers", data.num_workers, 0)
    _at_least("data.burn_in", data.burn_in, 0)
    steps = data.lookback if data.mode == "sequence" else data.horizon
    _require(data.burn_in < steps, "data.burn_in", data.burn_in,
             f"must be shorter than the {steps} target steps of a window "
             f"({'data.lookback' if data.mode == 'sequence' else 'data.horizon'})")
    if data.season is not None:
        _at_least("data.season", data.season, 1)
    positive = data.positive
    _require(isinstance(positive, bool) or (isinstance(positive, list)
                                            and all(isinstance(c, str) for c in positive)),
             "data.positive", positive, "must be true, false or a list of column names")
    if data.layout == "samples":
        check_sample_split(data.split)
    else:
        check_series_split(data)
    check_universe(data)
    check_source_rules(data)


def check_universe(data: DataConfig) -> None:
    """A universe source needs the universe layout and the other way round; a universe model
    forecasts values (the per-series scalers and baselines are for regression)."""
    universe_source = data.source in UNIVERSE_SOURCES
    if data.layout != "universe":
        _require(not universe_source, "data.layout", data.layout,
                 f"must be universe for data.source={data.source} (many series)")
        return
    _require(universe_source, "data.source", data.source,
             f"data.layout=universe reads many series: use one of {', '.join(UNIVERSE_SOURCES)}")
    _require(data.mode == "forecast" and data.task == "regression", "data.mode", data.mode,
             "data.layout=universe forecasts values: set data.mode=forecast, data.task=regression")
    _at_least("data.min_windows", data.min_windows, 1)


def check_target_transform(data: DataConfig) -> None:
    _one_of("data.target_transform", data.target_transform, TARGET_TRANSFORMS)
    if data.target_transform == "none":
        return
    what = f"data.target_transform={data.target_transform}"
    _require(data.layout in ("series", "universe") and data.mode == "forecast"
             and data.task == "regression", "data.target_transform", data.target_transform,
             "needs a forecast of a series (data.layout=series or universe, data.mode=forecast, "
             "data.task=regression)")
    missing = [t for t in data.targets if t not in data.inputs]
    _require(not missing, "data.inputs", data.inputs,
             f"must include the target(s) {missing}: {what} turns forecasts back into levels from "
             "the last observed value")


def check_series_split(data: DataConfig) -> None:
    split = data.split
    if split.train_end is not None or split.val_end is not None:
        _require(split.train_end is not None and split.val_end is not None, "data.split",
                 f"train_end={split.train_end}, val_end={split.val_end}",
                 "set both train_end and val_end (or neither, to split by fractions)")
        train_end, val_end = _date("data.split.train_end", split.train_end), _date("data.split.val_end", split.val_end)
        _require(train_end < val_end, "data.split.val_end", split.val_end,
                 f"must be after data.split.train_end={split.train_end}")
        return
    fractions = {"train": split.train, "val": split.val, "test": split.test}
    for name, value in fractions.items():
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        _require(ok, f"data.split.{name}", value, "must be a fraction in [0, 1]")
    _require(fractions["train"] > 0, "data.split.train", fractions["train"], "must be > 0")
    total = sum(fractions.values())
    _require(abs(total - 1.0) < 1e-6, "data.split", fractions, f"fractions must add up to 1 (they add up to {total:g})")
    rows = known_rows(data)
    if rows is not None:
        span = data.lookback if data.mode == "sequence" else data.lookback + data.horizon
        for name, fraction in fractions.items():
            have = int(rows * fraction)
            _require(have >= span, f"data.split.{name}", fraction,
                     f"gives {have} rows of {rows}, fewer than one window needs "
                     f"(data.lookback{'' if data.mode == 'sequence' else ' + data.horizon'} = {span})")


def known_rows(data: DataConfig) -> int | None:
    """Rows a generated source will have, so a too-short split is refused before generating it."""
    if data.source == "sine":
        return int(data.params["points"])
    if data.source == "sst_synthetic":
        return int(data.params["months"])
    return None


def check_sample_split(split: SplitConfig) -> None:
    for name in ("train", "val", "test"):
        value = getattr(split, name)
        labels = [value] if isinstance(value, str) else value
        ok = isinstance(labels, list) and labels and all(isinstance(v, str) for v in labels)
        _require(bool(ok), f"data.split.{name}", value,
                 "with layout=samples each split names the sample labels it takes, e.g. train")


def _date(key: str, value: Any) -> pd.Timestamp:
    stamp = pd.to_datetime(str(value), errors="coerce")
    _require(not pd.isna(stamp), key, value, "must be a date, e.g. 2022-12-31")
    return stamp


def check_source_rules(data: DataConfig) -> None:
    p = data.params
    if data.source == "sine":
        _at_least("data.params.points", p["points"], 10)
        _require(p["periods"] > 0, "data.params.periods", p["periods"], "must be > 0")
        _at_least("data.params.noise", p["noise"], 0)
        _at_least("data.params.target_noise", p["target_noise"], 0)
    elif data.source == "binary_add":
        _require(2 <= p["bits"] <= 30, "data.params.bits", p["bits"], "must be between 2 and 30")
        for split in ("train", "val", "test"):
            _at_least(f"data.params.{split}_pairs", p[f"{split}_pairs"], 1)
        operands = 2 ** (p["bits"] - 1)  # distinct unordered pairs {a, b} of operands < 2**(bits-1)
        pairs = p["train_pairs"] + p["val_pairs"] + p["test_pairs"]
        _require(pairs <= operands * (operands + 1) // 2, "data.params.train_pairs+val_pairs+test_pairs",
                 pairs, f"must add up to at most {operands * (operands + 1) // 2} distinct pairs for "
                        f"{p['bits']} bits")
        _require(data.lookback == p["bits"], "data.lookback", data.lookback,
                 f"must equal data.params.bits={p['bits']} (one step per bit)")
    elif data.source == "sst_synthetic":
        _at_least("data.params.months", p["months"], 24)
        _require(-1 < p["ar_coefficient"] < 1, "data.params.ar_coefficient", p["ar_coefficient"],
                 "must lie strictly between -1 and 1")
        _require(bool(p["regions"]), "data.params.regions", p["regions"], "must name at least one region")
        _at_least("data.params.noise", p["noise"], 0)
    elif data.source == "stock":
        check_stock_params(p)
    elif data.source == "universe_synthetic":
        _at_least("data.params.n_series", p["n_series"], 1)
        _at_least("data.params.days", p["days"], 2)
        _at_least("data.params.regimes", p["regimes"], 0)
        _require(0 <= p["correlation"] <= 1, "data.params.correlation", p["correlation"],
                 "must be in [0, 1]")
        _date("data.params.start", p["start"])
    elif data.source == "universe_file":
        if not p["path"]:
            raise ConfigError("data.params.path is not set: point it at a long CSV or Parquet file "
                              "(columns date, series, values), e.g. make train ARGS=\"data=universe_file "
                              "data.params.path=closes.csv\"")
    elif data.source == "universe_stock":
        check_universe_stock_params(p)
    elif data.source == "csv":
        if not p["path"]:
            raise ConfigError("data.params.path is not set: point it at your CSV or Parquet file, e.g. "
                              "make train ARGS=\"data=csv data.params.path=prices.csv\"")
        if p["encoding"]:
            _known_encoding(p["encoding"])


def check_stock_params(p: Mapping[str, Any]) -> None:
    code = p["code"]
    if isinstance(code, int) and not isinstance(code, bool):
        raise ConfigError(f"data.params.code={code!r}: a stock code is six digits as text; quote it, "
                          f"e.g. data.params.code=\"'{code:06d}'\"")
    _require(isinstance(code, str) and len(code) == 6 and code.isdigit(), "data.params.code", code,
             "must be a six-digit code, e.g. '000001'")
    check_bar_params(p)


def check_bar_params(p: Mapping[str, Any]) -> None:
    """What every daily-bar fetch takes, one code or a universe: the API, its limits, the dates."""
    _one_of("data.params.api", p["api"], STOCK_APIS)
    _require(p["timeout"] > 0, "data.params.timeout", p["timeout"], "must be > 0 seconds")
    _at_least("data.params.page_rows", p["page_rows"], 1)
    start = _date("data.params.start", p["start"]) if p["start"] else None
    end = _date("data.params.end", p["end"]) if p["end"] else None
    if start is not None and end is not None:
        _require(start <= end, "data.params.start", p["start"], f"must not be after data.params.end={p['end']}")


def check_universe_stock_params(p: Mapping[str, Any]) -> None:
    _require(bool(p["codes"]) or bool(p["index"]), "data.params.codes", p["codes"],
             "name the codes (e.g. [600000.SH,000001.SZ]) or an index (data.params.index=000300.SH)")
    _require(all(isinstance(c, str) and c.strip() for c in p["codes"]), "data.params.codes",
             p["codes"], "must be codes as text, e.g. [600000.SH,000001.SZ]")
    check_bar_params(p)
    _at_least("data.params.attempts", p["attempts"], 1)
    _at_least("data.params.backoff_s", p["backoff_s"], 0)
    if p["members_on"]:
        _date("data.params.members_on", p["members_on"])


def _known_encoding(name: str) -> None:
    try:
        codecs.lookup(name)
    except LookupError:
        raise ConfigError(f"data.params.encoding={name!r}: unknown encoding; e.g. utf-8, gbk, gb18030, "
                          "utf-16, or null to detect it") from None


def check_model(model: ModelConfig, data: DataConfig) -> None:
    variants = model_variants()
    _one_of("model.name", model.name, variants)
    _at_least("model.hidden_size", model.hidden_size, 1)
    _at_least("model.num_layers", model.num_layers, 1)
    _require(0 <= model.dropout < 1, "model.dropout", model.dropout, "must be in [0, 1)")
    _one_of("model.init_state", model.init_state, INIT_STATES)
    _require(0 <= model.teacher_forcing <= 1, "model.teacher_forcing", model.teacher_forcing,
             "must be in [0, 1]")
    _at_least("model.recurrent_l2", model.recurrent_l2, 0)
    check_head(model, data)
    check_transformed_model(model, data)
    _one_of("model.series_encoding", model.series_encoding, SERIES_ENCODINGS)
    _at_least("model.series_embedding_dim", model.series_embedding_dim, 1)
    if model.name == "seq2seq":
        _require(data.mode == "forecast", "model.name", model.name,
                 "needs a forecasting data config (data.mode=forecast), not a per-step sequence task")
        if model.cell is not None:
            _one_of("model.cell", model.cell, [v for v in variants if v != "seq2seq"])


def check_transformed_model(model: ModelConfig, data: DataConfig) -> None:
    if data.target_transform == "none":
        return
    # Quantiles of one change map to quantiles of the next price; those of a sum of several
    # changes are not the sum of their quantiles, nor is a gaussian of returns one of prices.
    _require(model.head == "point" or (model.head == "quantile" and data.horizon == 1),
             "model.head", model.head, f"with data.target_transform={data.target_transform} only "
             "point, or quantile at data.horizon=1, are supported")
    _require(model.name != "seq2seq", "model.name", model.name,
             f"does not support data.target_transform={data.target_transform} yet (its decoder "
             "starts from the last level); use a single-pass variant, e.g. model=lstm")


def check_head(model: ModelConfig, data: DataConfig) -> None:
    _one_of("model.head", model.head, HEADS)
    if model.head != "point":
        _require(data.task == "regression", "model.head", model.head,
                 f"needs data.task=regression (data.task={data.task!r} predicts probabilities)")
    levels = model.quantiles
    _require(bool(levels) and all(0 < q < 1 for q in levels), "model.quantiles", levels,
             "must be levels strictly between 0 and 1, e.g. [0.1,0.5,0.9]")
    _require(all(a < b for a, b in zip(levels, levels[1:], strict=False)), "model.quantiles", levels,
             "must be strictly increasing, e.g. [0.1,0.5,0.9]")
    _require(any(abs(q - 0.5) < 1e-9 for q in levels), "model.quantiles", levels,
             "must include 0.5 (the median is the point forecast), e.g. [0.1,0.5,0.9]")


def model_variants() -> list[str]:
    return sorted([*BACKBONES, "seq2seq"])


def check_trainer(trainer: TrainerConfig) -> None:
    _one_of("trainer.accelerator", trainer.accelerator, ACCELERATORS)
    _one_of("trainer.strategy", trainer.strategy, STRATEGIES)
    _one_of("trainer.precision", trainer.precision, PRECISIONS)
    _one_of("trainer.test_checkpoint", trainer.test_checkpoint, TEST_CHECKPOINTS)
    for key in ("devices", "num_nodes", "max_epochs", "log_every_n_steps"):
        _at_least(f"trainer.{key}", getattr(trainer, key), 1)
    _at_least("trainer.early_stopping_patience", trainer.early_stopping_patience, 0)
    _at_least("trainer.last_checkpoint_every_s", trainer.last_checkpoint_every_s, 0)
    if trainer.gradient_clip_val is not None:
        _require(trainer.gradient_clip_val > 0, "trainer.gradient_clip_val", trainer.gradient_clip_val,
                 "must be > 0 (or null for no clipping)")


def check_tracking(tracking: TrackingConfig) -> None:
    _require(bool(tracking.uri.strip()), "tracking.uri", tracking.uri, "must not be empty")
    _require(bool(tracking.experiment.strip()), "tracking.experiment", tracking.experiment, "must not be empty")
    _require(bool(tracking.registered_model.strip()), "tracking.registered_model",
             tracking.registered_model, "must not be empty")
    _require(tracking.flush_every_s > 0, "tracking.flush_every_s", tracking.flush_every_s, "must be > 0")
    _require(tracking.retry_for_s > 0, "tracking.retry_for_s", tracking.retry_for_s, "must be > 0 seconds")


def check_promotion(promotion: PromotionConfig, task: str, head: str = "point") -> None:
    if promotion.metric in PROBABILISTIC_METRICS:
        _require(head != "point", "promotion.metric", promotion.metric,
                 "ranks intervals, which model.head='point' does not give: set model.head to "
                 "quantile, gaussian or student_t, or rank on a point metric")
    known = [*TASK_METRICS[task], *(PROBABILISTIC_METRICS if task == "regression" else ())]
    _one_of("promotion.metric", promotion.metric, known)
    if promotion.version is not None:
        _at_least("promotion.version", promotion.version, 1)


def check_runner(runner: RunnerConfig, task: str) -> None:
    _require(bool(runner.variants), "runner.variants", runner.variants, "must name at least one variant")
    for expectation in runner.expect:
        metric = expectation.metric.removeprefix("test/").removeprefix("val/")
        known = [*TASK_METRICS[task], "mase", "mase_seasonal_naive", "persistence_mae", "loss",
                 *STUDY_INTERVAL_METRICS]
        _one_of("runner.expect.metric", metric, known)
        _require(expectation.min is not None or expectation.max is not None, "runner.expect",
                 expectation.metric, "needs a min or a max")


def check_retrain(retrain: RetrainConfig) -> None:
    variants = retrain.variants
    _require(bool(variants) and all(isinstance(v, str) and v for v in variants), "retrain.variants",
             variants, "must name at least one model variant, e.g. retrain.variants=[lstm,gru]")
    _require(len(set(variants)) == len(variants), "retrain.variants", variants, "names a variant twice")
    known = model_variants()
    for variant in variants:
        _one_of("retrain.variants", variant, known)
    if retrain.max_mase is not None:
        _require(retrain.max_mase > 0, "retrain.max_mase", retrain.max_mase, "must be > 0 (or null)")


def _model_uri(key: str, uri: str | None) -> None:
    if uri is not None:
        name, _, ref = uri.removeprefix("models:/").partition("/")
        if "@" in name:
            name, _, ref = name.partition("@")
        _require(uri.startswith("models:/") and bool(name) and bool(ref), key, uri,
                 "must be a registered model as models:/<name>@<alias> or models:/<name>/<version>, "
                 "e.g. models:/sine-forecaster@champion")


def check_serve(serve: ServeConfig) -> None:
    _model_uri("serve.model", serve.model)
    _require(bool(serve.host.strip()), "serve.host", serve.host, "must not be empty (e.g. 127.0.0.1)")
    _require(1 <= serve.port <= 65535, "serve.port", serve.port, "must be a TCP port in 1..65535")
    _at_least("serve.workers", serve.workers, 1)


def check_predict(predict: PredictConfig) -> None:
    _model_uri("predict.model", predict.model)
    if predict.input is not None:
        _require(Path(predict.input).expanduser().is_file(), "predict.input", predict.input,
                 f"no such file (relative paths start at {Path.cwd()})")
    suffix = Path(predict.output).suffix.lower()
    _require(suffix in (".csv", ".parquet", ".pq"), "predict.output", predict.output,
             "must name a .csv or .parquet file")


# --- the README's config reference ----------------------------------------------------------------

CHOICES: dict[str, Sequence[str]] = {
    "data.layout": LAYOUTS, "data.task": TASKS, "data.mode": MODES, "data.scaler": SCALERS,
    "data.fill": FILLS, "model.init_state": INIT_STATES, "model.head": HEADS,
    "model.series_encoding": SERIES_ENCODINGS,
    "trainer.accelerator": ACCELERATORS,
    "trainer.strategy": STRATEGIES, "trainer.precision": PRECISIONS,
    "trainer.test_checkpoint": TEST_CHECKPOINTS,
    "promotion.metric": [*(m for metrics in TASK_METRICS.values() for m in metrics),
                         *PROBABILISTIC_METRICS],
}
REFERENCE_SECTIONS = (("data", DataConfig), ("model", ModelConfig), ("trainer", TrainerConfig),
                      ("tracking", TrackingConfig), ("optim", OptimConfig),
                      ("promotion", PromotionConfig), ("retrain", RetrainConfig))


def _default_text(f: Any) -> str:
    if f.default is not NO_DEFAULT:
        value = f.default
    elif f.default_factory is not NO_DEFAULT:
        value = f.default_factory()
    else:
        return "required"
    if value == MISSING:  # OmegaConf's "???": the data config must set it
        return "required"
    return "null" if value is None else f"`{value}`"


def reference_markdown() -> str:
    """One table of every key: type, default and, where the schema has a list, the choices."""
    lines = ["| key | type | default | choices |", "|---|---|---|---|",
             "| `seed` | int | `42` | |", "| `study` | str \\| None | null | |"]
    for section, schema in REFERENCE_SECTIONS:
        for f in fields(schema):
            key = f"{section}.{f.name}"
            if key == "data.split":
                for split in fields(SplitConfig):
                    lines.append(f"| `data.split.{split.name}` | {split.type.replace('|', chr(92) + '|')} | "
                                 f"{_default_text(split)} | |")
                continue
            choices = ", ".join(CHOICES.get(key, ()))
            kind = str(f.type).replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {_default_text(f)} | {choices} |")
    lines.append("")
    lines.append("`data.params` per source (`data.source`):")
    lines.append("")
    for source, schema in SOURCE_PARAMS.items():
        shown = ", ".join(f"`{p.name}`={_default_text(p).strip('`')}" for p in fields(schema)) or "none"
        lines.append(f"- {source}: {shown}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m pipeline.config: the table README.md embeds
    print(reference_markdown())
