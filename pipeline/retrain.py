"""Retraining: fetch -> validate -> train each variant -> evaluate -> promote the best one.

    python -m pipeline.retrain [overrides]        (make retrain ARGS="data=stock")

A retrain is described by its Hydra overrides of conf/retrain.yaml (plain strings), because each
variant is composed from its own model config. Every stage below is a function of those overrides
and of the small values the stage before returned (digests, run ids, versions), never of data
frames: `retrain()` chains them in one process, the Airflow DAG in dags/ runs each in its own task.

Every variant trains with promotion off and registers a version; the candidates are scored on the
same test windows, and only the best one is offered to `promote`, which moves @champion only if it
beats the current champion. A candidate that does not win is an outcome, not a failure.
"""

from __future__ import annotations

import json
import logging
import logging.config
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.cli import (
    CONF_DIR,
    check_group_choices,
    compose,
    exit_on_pipeline_error,
    quiet_mlflow,
)
from pipeline.errors import ConfigError, DataError, PipelineError

CONFIG_NAME = "retrain"
SUMMARY_FILE = "retrain_summary.json"

log = logging.getLogger(__name__)


# --- config -------------------------------------------------------------------------------------


def compose_config(overrides: Sequence[str] = (), variant: str | None = None) -> DictConfig:
    """conf/retrain.yaml with the overrides, and with `variant` as the model if one is given."""
    overrides = list(overrides) if variant is None else variant_overrides(overrides, variant)
    return compose(CONFIG_NAME, overrides)


def variant_overrides(overrides: Sequence[str], variant: str) -> list[str]:
    """The overrides that train `variant`: its model config if it has one, else the configured
    model's sizes with `variant` as the backbone (e.g. rnn, which is a backbone without a file).
    Model sizes the user overrode (model.hidden_size=16) apply to every variant."""
    kept = [o for o in overrides if _override_key(o) not in ("model", "model.name")]
    if (CONF_DIR / "model" / f"{variant}.yaml").is_file():
        return [*kept, f"model={variant}"]
    return [*kept, f"model.name={variant}"]


def _override_key(override: str) -> str:
    return override.lstrip("+~").partition("=")[0]


def overrides_from_params(data: str, variants: Sequence[str], tracking_uri: str = "",
                          overrides: Sequence[str] = ()) -> list[str]:
    """The overrides for a retrain described by name (the Airflow DAG's params, CI's inputs)."""
    from pipeline.cli import group_options

    choices = group_options(CONF_DIR, "data")
    if data not in choices:
        raise ConfigError(f"data={data!r} is not a known data config; choose one of: {', '.join(choices)}")
    names = ",".join(hydra_quoted(v) for v in variants)
    out = [f"data={data}", f"retrain.variants=[{names}]"]
    if tracking_uri:
        out.append(f"tracking.uri={hydra_quoted(tracking_uri)}")
    return [*out, *overrides]


def hydra_quoted(value: str) -> str:
    """A string as a quoted Hydra override value: URIs hold ':', '@', '?', '=' and the like."""
    # Hydra reads a backslash literally unless it precedes a quote or ends the string.
    escaped = re.sub(r"(\\+)(?='|$)", r"\1\1", value).replace("'", "\\'")
    return f"'{escaped}'"


def variants_of(cfg: DictConfig) -> list[str]:
    variants = list(cfg.retrain.variants or [])
    if not variants or not all(isinstance(v, str) and v for v in variants):
        raise ConfigError(f"retrain.variants={variants!r}: must name at least one model variant, "
                          "e.g. retrain.variants=[lstm,gru]")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"retrain.variants={variants!r}: names a variant twice")
    return variants


def summary_path(cfg: DictConfig) -> Path:
    folder = cfg.retrain.output_dir or Path(tempfile.gettempdir()) / "lstm-pipeline-retrain" / cfg.data.name
    return Path(folder).resolve() / SUMMARY_FILE


def public_uri(uri: str) -> str:
    """A tracking URI fit for logs and the uploaded summary: no user:password@, no secret values."""
    from pipeline.tracking.secrets import scrub_text

    return scrub_text(re.sub(r"//[^/@]*@", "//", uri))


# --- the small values passed between stages -------------------------------------------------------


class _Record:
    """Dataclasses that travel between tasks as plain JSON-able dicts (Airflow XCom)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class FetchReport(_Record):
    source: str
    digest: str
    rows: int
    from_cache: bool
    cache_path: str | None
    notice: str | None


@dataclass(frozen=True)
class ValidationReport(_Record):
    digest: str
    windows: dict[str, int]
    variants: list[str]


@dataclass(frozen=True)
class Candidate(_Record):
    variant: str
    run_id: str
    run_name: str
    model_name: str
    version: str
    data_digest: str
    test_metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # the promotion metric on the common test windows
    eligible: bool = True  # False: no score, or not better than persistence (retrain.max_mase)
    note: str = ""

    @property
    def mase(self) -> float | None:
        return self.test_metrics.get("test/mase")


@dataclass
class RetrainSummary(_Record):
    data: str
    experiment: str
    model_name: str
    tracking_uri: str
    metric: str
    direction: str
    data_digest: str
    candidates: list[dict[str, Any]]
    best: str | None  # the variant offered for promotion
    decision: dict[str, Any] | None  # PromotionDecision as a dict; None when nothing was offered
    champion: str | None  # the champion version after this retrain
    finished_at: str = ""
    summary_file: str = ""

    @property
    def promoted(self) -> bool:
        return bool(self.decision and self.decision["promoted"])


# --- stages -------------------------------------------------------------------------------------


def check_tracking(overrides: Sequence[str] = ()) -> str:
    """Fail in seconds, before fetching or training, when the tracking server does not answer."""
    from pipeline.tracking.run import check_reachable

    cfg = compose_config(overrides)
    check_reachable(cfg.tracking.uri)
    return public_uri(cfg.tracking.uri)


def fetch_data(overrides: Sequence[str] = ()) -> FetchReport:
    """Fetch the data once (a cached source fills its cache; validation happens inside fetch)."""
    from pipeline.data.fetch import fetch

    cfg = compose_config(overrides)
    fetched = fetch(cfg.data)
    log.info("fetched %d rows of %s (digest %s%s)", len(fetched.frame), fetched.source,
             fetched.digest, ", from the cache" if fetched.from_cache else "")
    return FetchReport(source=fetched.source, digest=fetched.digest, rows=len(fetched.frame),
                       from_cache=fetched.from_cache,
                       cache_path=str(fetched.cache_path) if fetched.cache_path else None,
                       notice=fetched.notice)


def pinned_data(cfg: DictConfig) -> DictConfig:
    """After the fetch stage every stage reads the cache it filled: the variants all train on the
    snapshot that was fetched and validated, and none calls the network again."""
    with open_dict(cfg):
        cfg.data.offline = True
    return cfg


def validate(overrides: Sequence[str], fetched: FetchReport) -> ValidationReport:
    """Before fanning out: the fetched data windows cleanly, and every variant builds its network
    on them exactly as its training will, so a bad variant fails before any has trained."""
    from pipeline.data.datamodule import build_datamodule

    cfg = pinned_data(compose_config(overrides))
    dm = build_datamodule(cfg.data)
    if dm.prepared.digest != fetched.digest:
        raise DataError(f"data {cfg.data.name}: digest {dm.prepared.digest} differs from the fetched "
                        f"{fetched.digest}; the cache changed during the retrain, run it again")
    if not cfg.tracking.register:
        raise ConfigError("tracking.register=false: retraining compares registered versions; "
                          "leave registration on")
    variants = variants_of(cfg)
    for variant in variants:
        check_variant(overrides, variant, dm)
    return ValidationReport(digest=dm.prepared.digest, variants=variants,
                            windows={name: len(w) for name, w in dm.prepared.windows.items()})


def check_variant(overrides: Sequence[str], variant: str, dm) -> None:
    """Compose the variant's config and build its LightningModule on the data (cheap, untrained)."""
    from pipeline.train import build_module

    try:
        build_module(compose_config(overrides, variant), dm)
    except ConfigError as exc:
        raise ConfigError(f"retrain.variants: {variant}: {exc}") from None


def train_variant(overrides: Sequence[str], variant: str) -> Candidate:
    """One training of one variant: a run and a registered version, never a promotion."""
    from pipeline.train import train

    cfg = pinned_data(compose_config(overrides, variant))
    cfg.promotion.enabled = False  # retrain promotes once, the best candidate only
    result = train(cfg)
    run = _client(cfg).get_run(result.run_id)
    return Candidate(variant=variant, run_id=result.run_id, run_name=result.run_name,
                     model_name=result.model_name, version=str(result.model_version),
                     data_digest=run.data.tags.get("data_digest", ""),
                     test_metrics=dict(sorted(result.test_metrics.items())))


def evaluate(overrides: Sequence[str], candidates: Sequence[Candidate]) -> list[Candidate]:
    """Score every candidate on the same test windows; best first, then the ones not eligible."""
    from pipeline.tracking.registry import (
        load_registered_network,
        load_test_windows,
        score_on_windows,
    )

    if not candidates:
        raise PipelineError("no candidates to evaluate: no variant finished training")
    cfg = compose_config(overrides)
    client = _client(cfg)
    # One retrain trains every variant on one snapshot, so any candidate's windows serve all.
    windows = load_test_windows(client, candidates[0].run_id)
    scored = []
    for candidate in candidates:
        net = load_registered_network(candidate.model_name, candidate.version)
        score = score_on_windows(net, windows, cfg.promotion.metric)
        scored.append(judged(candidate, score, cfg.retrain.get("max_mase")))
    return rank(scored, cfg.promotion.direction)


def judged(candidate: Candidate, score: float | None, max_mase: float | None) -> Candidate:
    """The candidate with its score, and whether it may be offered for promotion at all."""
    values = {**candidate.as_dict(), "score": score}
    if score is None:
        values.update(eligible=False, note="cannot read the common test windows")
    elif max_mase is not None and candidate.mase is not None and not candidate.mase < max_mase:
        # A forecaster no better than "tomorrow = today" must not serve, even as a first version.
        values.update(eligible=False, note=f"MASE {candidate.mase:.3g} vs the persistence baseline "
                                           f"(retrain.max_mase={max_mase})")
    return Candidate.from_dict(values)


def rank(candidates: Sequence[Candidate], direction: str) -> list[Candidate]:
    """Eligible candidates by score (best first; ties keep the configured variant order)."""
    sign = 1.0 if direction == "minimize" else -1.0
    eligible = sorted((c for c in candidates if c.eligible), key=lambda c: sign * c.score)
    return [*eligible, *(c for c in candidates if not c.eligible)]


def promote_best(overrides: Sequence[str], ranked: Sequence[Candidate]) -> dict[str, Any] | None:
    """Offer the best eligible candidate to the champion/challenger check; None if there is none."""
    from pipeline.tracking.registry import promote

    best = ranked[0] if ranked and ranked[0].eligible else None
    if best is None:
        log.warning("no candidate is eligible for promotion; @champion stays where it is")
        return None
    cfg = compose_config(overrides)
    decision = promote(_client(cfg), best.model_name, best.version, cfg.promotion.metric,
                       cfg.promotion.direction)
    return asdict(decision)


def finish(overrides: Sequence[str], fetched: FetchReport, ranked: Sequence[Candidate],
           decision: dict[str, Any] | None) -> RetrainSummary:
    """The outcome as a summary, written to retrain.output_dir for people and CI to read."""
    from pipeline.tracking.registry import current_champion

    cfg = compose_config(overrides)
    summary = RetrainSummary(
        data=cfg.data.name, experiment=cfg.tracking.experiment,
        model_name=cfg.tracking.registered_model, tracking_uri=public_uri(cfg.tracking.uri),
        metric=cfg.promotion.metric, direction=cfg.promotion.direction, data_digest=fetched.digest,
        candidates=[c.as_dict() for c in ranked],
        best=ranked[0].variant if decision is not None else None, decision=decision,
        champion=current_champion(_client(cfg), cfg.tracking.registered_model),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        summary_file=str(summary_path(cfg)))
    write_summary(summary, Path(summary.summary_file))
    return summary


def write_summary(summary: RetrainSummary, path: Path) -> Path:
    """Write atomically, so an uploader never picks up half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
    partial.replace(path)
    return path


def retrain(overrides: Sequence[str] = ()) -> RetrainSummary:
    """Every stage in order, in this process: what `make retrain` runs."""
    check_tracking(overrides)
    fetched = fetch_data(overrides)
    checked = validate(overrides, fetched)
    candidates = [train_variant(overrides, variant) for variant in checked.variants]
    ranked = evaluate(overrides, candidates)
    decision = promote_best(overrides, ranked)
    return finish(overrides, fetched, ranked, decision)


def _client(cfg: DictConfig):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(cfg.tracking.uri)
    return MlflowClient(tracking_uri=cfg.tracking.uri)


# --- report ---------------------------------------------------------------------------------------


def decision_text(candidate: dict[str, Any], summary: RetrainSummary) -> str:
    if candidate["variant"] == summary.best and summary.decision is not None:
        verdict = "promoted to @champion" if summary.promoted else "not promoted"
        return f"{verdict}: {summary.decision['reason']}"
    if not candidate["eligible"]:
        return f"not eligible: {candidate['note']}"
    return f"not the best candidate on the same windows (best: {summary.best})"


def summary_table(summary: RetrainSummary) -> str:
    header = ("variant", "run id", "version", summary.metric, "mase", "decision")
    rows = [header]
    for c in summary.candidates:
        mase = c["test_metrics"].get("test/mase")
        rows.append((c["variant"], c["run_id"], c["version"], _number(c["score"]),
                     _number(mase), decision_text(c, summary)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in rows]
    champion = f"v{summary.champion}" if summary.champion else "none"
    lines.append(f"{summary.model_name} @champion: {champion}   store: {summary.tracking_uri}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


# --- command line ---------------------------------------------------------------------------------


def configure_logging() -> None:
    """The console-only logging `make train` gets from Hydra (conf/hydra/job_logging/console.yaml)."""
    config = OmegaConf.load(CONF_DIR / "hydra" / "job_logging" / "console.yaml")
    logging.config.dictConfig(OmegaConf.to_container(config, resolve=True))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    check_group_choices(argv, CONF_DIR)
    quiet_mlflow()
    configure_logging()
    with exit_on_pipeline_error():
        summary = retrain(argv)
    print(summary_table(summary), flush=True)
    print(f"summary: {summary.summary_file}", flush=True)


if __name__ == "__main__":
    main()
