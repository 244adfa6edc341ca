"""The retraining stages: each a plain function of the retrain's overrides and of what the stage
before returned, so `make retrain` chains them in one process and the DAG runs each in a task.

Every variant trains with promotion off and registers a version; the candidates are scored on the
same test windows, and only the best one is offered to the champion, which moves only if the
challenger beats it. A candidate that does not win is an outcome, not a failure.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from pipeline.cli import load_config
from pipeline.config import TrainConfig, tracking_store
from pipeline.data.datamodule import prepare_data
from pipeline.data.loading import load_data
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.retraining.records import (
    Candidate,
    CandidatesReport,
    FetchReport,
    RetrainSummary,
)
from pipeline.tracking.champion import (
    current_champion,
    load_registered_network,
    load_test_windows,
    promote_if_better,
    score_on_windows,
)
from pipeline.tracking.store import Store
from pipeline.training import build_module, train

CONFIG_NAME = "retrain"
SUMMARY_FILE = "retrain_summary.json"

log = logging.getLogger(__name__)


def retrain_config(overrides: Sequence[str] = (), variant: str | None = None) -> TrainConfig:
    """conf/retrain.yaml with the overrides, and with `variant` as the model if one is given."""
    return load_config(CONFIG_NAME, overrides if variant is None else variant_overrides(overrides, variant))


def variant_overrides(overrides: Sequence[str], variant: str) -> list[str]:
    """The overrides that train `variant` (conf/model/<variant>.yaml; the schema checked that
    every variant has one). Model sizes the user overrode (model.hidden_size=16) apply to every
    variant."""
    kept = [o for o in overrides if o.lstrip("+~").partition("=")[0] not in ("model", "model.name")]
    return [*kept, f"model={variant}"]


def pinned(cfg: TrainConfig) -> TrainConfig:
    """After the fetch stage every stage reads the cache it filled: the variants all train on the
    snapshot that was fetched and validated, and none calls the network again."""
    cfg.data.offline = True
    return cfg


def summary_path(cfg: TrainConfig) -> Path:
    folder = cfg.retrain.output_dir or Path(tempfile.gettempdir()) / "lstm-pipeline-retrain" / cfg.data.name
    return Path(folder).resolve() / SUMMARY_FILE


def _store(cfg: TrainConfig) -> Store:
    return tracking_store(cfg.tracking)


# --- the stages (one DAG task each) -----------------------------------------------------------------


def check_store(overrides: Sequence[str] = ()) -> str:
    """Fail in seconds, before fetching or training, when the tracking store cannot be used."""
    store = _store(retrain_config(overrides))
    store.check()
    return store.public_uri


def fetch_snapshot(overrides: Sequence[str] = ()) -> FetchReport:
    """Fetch the data once (a cached source fills its cache; validation happens inside)."""
    fetched = load_data(retrain_config(overrides).data)
    log.info("fetched %d rows of %s (digest %s%s)", len(fetched.frame), fetched.source,
             fetched.digest, ", from the cache" if fetched.from_cache else "")
    return FetchReport(source=fetched.source, digest=fetched.digest, rows=len(fetched.frame),
                       from_cache=fetched.from_cache,
                       cache_path=str(fetched.cache_path) if fetched.cache_path else None,
                       notice=fetched.notice)


def check_candidates(overrides: Sequence[str], fetched: FetchReport) -> CandidatesReport:
    """Before fanning out: the fetched data windows cleanly, and every variant builds its network
    on them exactly as its training will, so a bad variant fails before any has trained."""
    cfg = pinned(retrain_config(overrides))
    prepared = prepare_data(cfg.data)
    if prepared.digest != fetched.digest:
        raise DataError(f"data {cfg.data.name}: digest {prepared.digest} differs from the fetched "
                        f"{fetched.digest}; the cache changed during the retrain, run it again")
    if not cfg.tracking.register:
        raise ConfigError("tracking.register=false: retraining compares registered versions; "
                          "leave registration on")
    for variant in cfg.retrain.variants:
        try:
            build_module(pinned(retrain_config(overrides, variant)), prepared)
        except ConfigError as exc:
            raise ConfigError(f"retrain.variants: {variant}: {exc}") from None
    return CandidatesReport(digest=prepared.digest, variants=list(cfg.retrain.variants),
                            windows={name: len(w) for name, w in prepared.windows.items()})


def train_candidate(overrides: Sequence[str], variant: str) -> Candidate:
    """One training of one variant: a run and a registered version, never a promotion."""
    cfg = pinned(retrain_config(overrides, variant))
    cfg.promotion.enabled = False  # retrain promotes once, the best candidate only
    result = train(cfg)
    run = _store(cfg).client.get_run(result.run_id)
    return Candidate(variant=variant, run_id=result.run_id, run_name=result.run_name,
                     model_name=result.model_name, version=str(result.model_version),
                     data_digest=run.data.tags.get("data_digest", ""),
                     test_metrics=dict(sorted(result.test_metrics.items())))


def score_candidates(overrides: Sequence[str], candidates: Sequence[Candidate]) -> list[Candidate]:
    """Score every candidate on the same test windows; best first, then the ones not eligible."""
    if not candidates:
        raise PipelineError("no candidates to score: no variant finished training")
    cfg = retrain_config(overrides)
    store = _store(cfg)
    # One retrain trains every variant on one snapshot, so any candidate's windows serve all.
    windows = load_test_windows(store, candidates[0].run_id)
    scored = []
    for candidate in candidates:
        net = load_registered_network(store, candidate.model_name, candidate.version)
        score = score_on_windows(net, windows, cfg.promotion.metric)
        scored.append(judged(candidate, score, cfg.retrain.max_mase))
    return rank(scored, cfg.promotion.direction)


def judged(candidate: Candidate, score: float | None, max_mase: float | None) -> Candidate:
    """The candidate with its score, and whether it may be offered for promotion at all."""
    if score is None:
        return replace(candidate, score=None, eligible=False, note="cannot read the common test windows")
    if max_mase is not None and candidate.mase is not None and not candidate.mase < max_mase:
        # A forecaster no better than "tomorrow = today" must not serve, even as a first version.
        return replace(candidate, score=score, eligible=False,
                       note=f"MASE {candidate.mase:.3g} vs the persistence baseline "
                            f"(retrain.max_mase={max_mase})")
    return replace(candidate, score=score)


def rank(candidates: Sequence[Candidate], direction: str) -> list[Candidate]:
    """Eligible candidates by score (best first; ties keep the configured variant order)."""
    sign = 1.0 if direction == "minimize" else -1.0
    eligible = sorted((c for c in candidates if c.eligible), key=lambda c: sign * c.score)
    return [*eligible, *(c for c in candidates if not c.eligible)]


def offer_best(overrides: Sequence[str], ranked: Sequence[Candidate]) -> dict | None:
    """Offer the best eligible candidate to the champion; None if there is none."""
    best = ranked[0] if ranked and ranked[0].eligible else None
    if best is None:
        log.warning("no candidate is eligible for promotion; @champion stays where it is")
        return None
    cfg = retrain_config(overrides)
    decision = promote_if_better(_store(cfg), best.model_name, best.version, cfg.promotion.metric,
                                 cfg.promotion.direction, task=cfg.data.task)
    return asdict(decision)


def write_summary(overrides: Sequence[str], fetched: FetchReport, ranked: Sequence[Candidate],
                  decision: dict | None) -> RetrainSummary:
    """The outcome as a summary, written to retrain.output_dir for people and CI to read."""
    cfg = retrain_config(overrides)
    store = _store(cfg)
    summary = RetrainSummary(
        data=cfg.data.name, experiment=cfg.tracking.experiment,
        model_name=cfg.tracking.registered_model, tracking_uri=store.public_uri,
        metric=cfg.promotion.metric, direction=cfg.promotion.direction, data_digest=fetched.digest,
        candidates=[c.as_dict() for c in ranked],
        best=ranked[0].variant if decision is not None else None, decision=decision,
        champion=current_champion(store.client, cfg.tracking.registered_model),
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        summary_file=str(summary_path(cfg)))
    _write_atomically(summary, Path(summary.summary_file))
    return summary


def _write_atomically(summary: RetrainSummary, path: Path) -> Path:
    """An uploader never picks up half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary.as_dict(), indent=2, default=str) + "\n")
    partial.replace(path)
    return path


def retrain(overrides: Sequence[str] = ()) -> RetrainSummary:
    """Every stage in order, in this process: what `make retrain` runs."""
    check_store(overrides)
    fetched = fetch_snapshot(overrides)
    checked = check_candidates(overrides, fetched)
    candidates = [train_candidate(overrides, variant) for variant in checked.variants]
    ranked = score_candidates(overrides, candidates)
    decision = offer_best(overrides, ranked)
    return write_summary(overrides, fetched, ranked, decision)
