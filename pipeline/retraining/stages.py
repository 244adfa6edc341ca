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
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

from pipeline.cli import load_config
from pipeline.config import DataConfig, TrainConfig, tracking_store
from pipeline.data.datamodule import prepare_data
from pipeline.data.digest import frame_digest
from pipeline.data.loading import load_data
from pipeline.data.sources import SourceUnavailable
from pipeline.errors import ConfigError, DataError, PipelineError
from pipeline.retraining.records import (
    Candidate,
    CandidatesReport,
    ChunkReport,
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
# The universe source whose codes the DAG fetches in chunks, one mapped task each.
CHUNKED_SOURCE = "universe_stock"
SERIES_COLUMN = "series"  # the long frame's series column (pipeline.data.universe.SERIES)

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


def fetch_snapshot(overrides: Sequence[str] = (),
                   chunks: Sequence[ChunkReport] | None = None) -> FetchReport:
    """Fetch the data once (a cached source fills its cache; validation happens inside).

    `chunks`: the DAG's mapped fetches of a universe_stock run already filled the per-code
    caches, so the snapshot is read from them alone, and their reasons name the failed codes.
    """
    data = retrain_config(overrides).data
    if data.layout != "universe":
        return series_snapshot(data)
    if chunks is not None and data.source == CHUNKED_SOURCE:
        return chunked_snapshot(data, chunks)
    return universe_snapshot(data)


def series_snapshot(data: DataConfig) -> FetchReport:
    fetched = load_data(data)
    log.info("fetched %d rows of %s (digest %s%s)", len(fetched.frame), fetched.source,
             fetched.digest, ", from the cache" if fetched.from_cache else "")
    return FetchReport(source=fetched.source, digest=fetched.digest, rows=len(fetched.frame),
                       from_cache=fetched.from_cache,
                       cache_path=str(fetched.cache_path) if fetched.cache_path else None,
                       notice=fetched.notice)


def universe_snapshot(data: DataConfig) -> FetchReport:
    """The universe's long frame, read as prepare_data will read it: its digest is the one
    check_candidates and every training compute (frame_digest of the same sorted frame)."""
    from pipeline.data.universe_loading import read_universe

    read = read_universe(data)
    frame = read.frame
    series = int(frame[SERIES_COLUMN].nunique())
    report = FetchReport(source=data.source, digest=frame_digest(frame), rows=len(frame),
                         from_cache=bool(data.offline and data.source == CHUNKED_SOURCE),
                         cache_path=universe_cache(data), notice=None, series=series,
                         failed=dict(read.failed))
    report = with_failures(report, report.failed)
    log.info("fetched %d rows of %d series of %s (digest %s)", report.rows, series, data.source,
             report.digest)
    return report


def universe_cache(data: DataConfig) -> str | None:
    """Where a universe is cached: universe_stock's folder of per-code files; the others are
    generated or read from their own file each run."""
    if data.source != CHUNKED_SOURCE:
        return None
    return str(Path(str(data.cache_dir)).expanduser().resolve())


def with_failures(report: FetchReport, failed: Mapping[str, str]) -> FetchReport:
    """The report with `failed` and its one-line notice ("universe: 4 of 5 codes fetched; ...")."""
    from pipeline.data.sources.universe_fetch import summary

    notice = summary(report.series, report.series + len(failed), failed) if failed else None
    return replace(report, failed=dict(failed), notice=notice)


def chunked_snapshot(data: DataConfig, chunks: Sequence[ChunkReport]) -> FetchReport:
    """After the mapped fetches: one line for the codes that failed across every chunk, then the
    whole universe read offline from the caches they filled (stale caches standing in count)."""
    failed = merged_failures(chunks)
    asked = sum(len(c.codes) for c in chunks)
    if not any(c.fetched for c in chunks):
        first = next(iter(failed), "none")
        raise DataError(f"universe: all {asked} codes failed in {len(chunks)} fetch chunk(s); "
                        f"first: {first} ({failed.get(first, 'no chunk ran')})")
    offline = replace(data, offline=True)
    report = universe_snapshot(offline)
    # Offline, a failed code reads as "no cache"; the chunk that tried it knows the real reason.
    report = with_failures(report, {code: failed.get(code, why) for code, why in report.failed.items()})
    if report.notice:
        log.warning("%s", report.notice)
    return replace(report, from_cache=False)


def one_line(error: BaseException) -> str:
    """An error's text on one line, any secret (TUSHARE_TOKEN's value) removed: it goes to XCom."""
    from pipeline.secrets import scrub_text

    return " ".join(scrub_text(str(error)).split()) or type(error).__name__


def merged_failures(chunks: Sequence[ChunkReport]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for chunk in chunks:
        merged.update(chunk.failed)
    return merged


# --- the DAG's chunked fetch of a universe_stock run --------------------------------------------


def chunk_size(text: str | int) -> int:
    """PIPELINE_RETRAIN_FETCH_CHUNK as a number of codes per mapped fetch task."""
    try:
        size = int(str(text).strip())
    except ValueError:
        size = 0
    if size < 1:
        raise ConfigError(f"PIPELINE_RETRAIN_FETCH_CHUNK={text!r}: must be a whole number of codes "
                          "per fetch task, at least 1 (default 50)")
    return size


def chunked(codes: Sequence[str], size: int) -> list[list[str]]:
    return [list(codes[i:i + size]) for i in range(0, len(codes), size)]


def fetch_plan(overrides: Sequence[str], size: str | int) -> list[list[str]]:
    """The universe_stock run's codes (data.params.codes, then the index's members, whose list
    is fetched and cached here) in chunks of `size`; [] for any other data, which the snapshot
    step fetches itself."""
    size = chunk_size(size)
    data = retrain_config(overrides).data
    if data.source != CHUNKED_SOURCE:
        return []
    return chunked(stock_codes(data), size)


def stock_codes(data: DataConfig) -> list[str]:
    from pipeline.data.sources.universe_stock import Policy, universe_codes

    params = data.params
    policy = Policy(offline=data.offline, refresh=data.refresh, attempts=int(params["attempts"]),
                    backoff_s=float(params["backoff_s"]), sleep=time.sleep)
    return universe_codes(params, data.cache_dir, policy)


def fetch_chunk(overrides: Sequence[str], codes: Sequence[str]) -> ChunkReport:
    """Fill the caches of one chunk of codes; the bars stay there, the counts come back.

    Failed codes are an outcome, not a task failure: even a chunk of which every code was
    refused comes back as values, and the snapshot step fails only if no chunk fetched anything.
    The exception: every code unreachable (no network) raises, so the task's retries may find
    the vendor back. A config error raises too (retrying cannot fix it)."""
    from pipeline.data.sources.universe_stock import load_stock_universe

    data = retrain_config(overrides).data
    params = {**dict(data.params), "codes": list(codes), "index": None}  # the plan resolved it
    try:
        got = load_stock_universe(params, data.cache_dir, offline=data.offline,
                                  refresh=data.refresh, progress=False)
    except SourceUnavailable:
        raise
    except DataError as exc:
        reason = one_line(exc)
        return ChunkReport(codes=list(codes), fetched=0, failed={c: reason for c in codes})
    return ChunkReport(codes=list(codes), fetched=len(got.fetched), failed=dict(got.failed))


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
