"""Daily retraining after the market close (Airflow 3):

    fetch -> validate -> train (one mapped task per variant) -> evaluate -> promote -> forecast

and for a universe of stock codes (PIPELINE_RETRAIN_DATA=universe_stock, or
PIPELINE_RETRAIN_FETCH_CHUNK set), the fetch is mapped over chunks of codes first:

    codes -> fetch_chunk (one mapped task per chunk) -> fetch (the snapshot, offline) -> ...

Each task runs one stage of pipeline.retraining.stages, the functions `make retrain` chains, and
hands the next one small values only: digests, run ids, versions. The scheduler parses this file
often, so it imports nothing from the pipeline (torch, lightning, mlflow, pandas) at module level;
the tasks import it when they run.

Settings, read from the environment where the DAG is parsed:

    PIPELINE_RETRAIN_SCHEDULE   cron of the runs        default "30 16 * * 1-5" (16:30, Mon-Fri)
    PIPELINE_RETRAIN_TIMEZONE   the cron's time zone    default Asia/Shanghai (SSE closes 15:00)
    PIPELINE_RETRAIN_DATA       data config             default stock
    PIPELINE_RETRAIN_VARIANTS   comma-separated         default lstm,gru,peephole
    PIPELINE_RETRAIN_OVERRIDES  extra Hydra overrides, shell-quoted (e.g. "trainer.max_epochs=50")
    PIPELINE_RETRAIN_FETCH_CHUNK  codes per mapped fetch task of a universe_stock run; default 50

The chunked graph is chosen where the DAG is parsed (a DAG's shape cannot change per run): a run
of other data on it has no chunks (fetch_chunk is skipped) and its fetch task fetches as usual,
and a universe_stock run on the plain graph fetches every code in its one fetch task. Each chunk
fills the per-code caches and returns counts and {code: reason} only; a code that fails is
reported, never fatal to its chunk (a chunk whose every code is unreachable raises, for its
retries); the fetch task names every failed code in one line, reads the whole universe from the
caches, and fails only when no code of any chunk was fetched.

and, as for `make train`, MLFLOW_TRACKING_URI and TUSHARE_TOKEN where the tasks run, and
PIPELINE_DATA_CACHE: the folder the fetch task fills and every later task reads (offline, so all
variants train on one snapshot); workers that run this DAG's tasks must share it. A run's
params (data, variants, overrides) start from those defaults and can be changed per run:
airflow dags trigger lstm_retrain -c '{"variants": ["lstm", "gru"]}'. A trigger is untrusted:
its params pass pipeline.retraining.triggers (hyperparameters and shipped data configs only; no
interpolation, no paths, URIs or directories, which come from the workers' environment).

The weekday cron also fires on exchange holidays: such a run retrains on unchanged data, and its
versions still have to beat the champion on the same windows to be promoted.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

SCHEDULE = os.environ.get("PIPELINE_RETRAIN_SCHEDULE", "30 16 * * 1-5")
TIMEZONE = os.environ.get("PIPELINE_RETRAIN_TIMEZONE", "Asia/Shanghai")
DATA = os.environ.get("PIPELINE_RETRAIN_DATA", "stock")
VARIANTS = [v.strip() for v in os.environ.get("PIPELINE_RETRAIN_VARIANTS", "lstm,gru,peephole").split(",")
            if v.strip()]
# The deployment's own overrides (trusted: set by whoever runs the workers), before the trigger's.
OVERRIDES = shlex.split(os.environ.get("PIPELINE_RETRAIN_OVERRIDES", ""))
# Checked by the codes task (a bad value fails that task with one line, not the DAG's parse).
FETCH_CHUNK = os.environ.get("PIPELINE_RETRAIN_FETCH_CHUNK", "50")
CHUNKED = DATA == "universe_stock" or "PIPELINE_RETRAIN_FETCH_CHUNK" in os.environ


@contextmanager
def stage() -> Iterator[list[str]]:
    """Around every task: this run's params as the Hydra overrides each stage composes its config
    from; a config error fails the task at once, since retrying cannot fix a bad config."""
    from pipeline.cli import quiet_mlflow
    from pipeline.errors import ConfigError
    from pipeline.retraining.triggers import overrides_from_params

    quiet_mlflow()
    params = get_current_context()["params"]
    try:
        trigger = overrides_from_params(params["data"], params["variants"], params["overrides"])
        yield [*OVERRIDES, *trigger]
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


@dag(
    dag_id="lstm_retrain",
    description="Retrain the LSTM-family forecasters on the latest closes; promote the best if it beats the champion",
    schedule=CronTriggerTimetable(SCHEDULE, timezone=TIMEZONE),
    start_date=pendulum.datetime(2026, 1, 1, tz=TIMEZONE),
    catchup=False,  # a missed day is not worth retraining once the next one's data is in
    max_active_runs=1,  # two retrains racing for @champion would each compare against a stale one
    dagrun_timeout=timedelta(hours=4),
    default_args={"retries": 2, "retry_delay": timedelta(minutes=2)},
    params={
        "data": Param(DATA, type="string", minLength=1, description="data config (conf/data/<name>.yaml)"),
        "variants": Param(VARIANTS, type="array", items={"type": "string", "minLength": 1}, minItems=1,
                          description="model variants to train, one task each"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="extra Hydra overrides of hyperparameters, e.g. trainer.max_epochs=50"),
    },
    tags=["lstm-pipeline", "retrain"],
)
def lstm_retrain():
    # The data vendor publishes the day's closes some time after the close and its API has bad
    # minutes: retry with backoff, and never let one hanging request hold the run.
    @task(retries=4, retry_delay=timedelta(minutes=5), retry_exponential_backoff=True,
          execution_timeout=timedelta(minutes=10), multiple_outputs=False)
    def fetch() -> dict:
        from pipeline.retraining import stages

        with stage() as overrides:
            stages.check_store(overrides)
            return stages.fetch_snapshot(overrides).as_dict()

    # The codes of a universe_stock run (its index's member list fetched and cached here), in
    # chunks; [] for other data, so fetch_chunk maps over nothing and is skipped.
    @task(retries=4, retry_delay=timedelta(minutes=5), retry_exponential_backoff=True,
          execution_timeout=timedelta(minutes=10))
    def codes() -> list[list[str]]:
        from pipeline.retraining import stages

        with stage() as overrides:
            stages.check_store(overrides)
            return stages.fetch_plan(overrides, FETCH_CHUNK)

    # A chunk of codes a time, a polite sequential loop within it (universe_stock explains why).
    @task(retries=4, retry_delay=timedelta(minutes=5), retry_exponential_backoff=True,
          execution_timeout=timedelta(minutes=30), multiple_outputs=False)
    def fetch_chunk(chunk: list[str]) -> dict:
        from pipeline.retraining import stages

        with stage() as overrides:
            return stages.fetch_chunk(overrides, chunk).as_dict()

    # Reads the caches the chunks filled, so there is nothing flaky to retry; runs when
    # fetch_chunk was skipped (no chunks: other data, fetched here as by the plain graph).
    @task(task_id="fetch", retries=0, trigger_rule="none_failed",
          execution_timeout=timedelta(minutes=10), multiple_outputs=False)
    def snapshot(plan: list[list[str]], chunks: list[dict] | None = None) -> dict:
        from pipeline.retraining import stages
        from pipeline.retraining.records import ChunkReport

        reports = [ChunkReport.from_dict(c) for c in (chunks or [])] if plan else None
        with stage() as overrides:
            return stages.fetch_snapshot(overrides, reports).as_dict()

    @task(execution_timeout=timedelta(minutes=10))
    def validate(fetched: dict) -> list[str]:
        from pipeline.retraining import stages
        from pipeline.retraining.records import FetchReport

        with stage() as overrides:
            return stages.check_candidates(overrides, FetchReport.from_dict(fetched)).variants

    # A failed training is a bug or bad data, not a hiccup: no retries.
    @task(retries=0, execution_timeout=timedelta(hours=2), multiple_outputs=False)
    def train(variant: str) -> dict:
        from pipeline.retraining import stages

        with stage() as overrides:
            return stages.train_candidate(overrides, variant).as_dict()

    @task(execution_timeout=timedelta(minutes=20))
    def evaluate(candidates: list[dict]) -> list[dict]:
        from pipeline.retraining import stages
        from pipeline.retraining.records import Candidate

        given = [Candidate.from_dict(c) for c in candidates]
        with stage() as overrides:
            return [c.as_dict() for c in stages.score_candidates(overrides, given)]

    @task(execution_timeout=timedelta(minutes=20), multiple_outputs=False)
    def promote(fetched: dict, ranked: list[dict]) -> dict:
        from pipeline.retraining import stages
        from pipeline.retraining.records import Candidate, FetchReport
        from pipeline.retraining.table import summary_table

        candidates = [Candidate.from_dict(c) for c in ranked]
        with stage() as overrides:
            decision = stages.offer_best(overrides, candidates)
            summary = stages.write_summary(overrides, FetchReport.from_dict(fetched), candidates,
                                           decision)
        print(summary_table(summary), flush=True)
        return {"summary_file": summary.summary_file, "best": summary.best,
                "promoted": summary.promoted, "champion": summary.champion}

    # The champion after this run (promoted or kept) forecasts the configured series (every series of a universe) from the
    # fetched snapshot: forecast.csv beside the summary (pipeline.predict, as `make predict`).
    @task(execution_timeout=timedelta(minutes=10), multiple_outputs=False)
    def forecast(outcome: dict) -> dict:
        from pipeline.predict import forecast_after_retrain

        with stage() as overrides:
            written = forecast_after_retrain(overrides)
        print(f"forecast: {written.get('path') or written.get('skipped')}", flush=True)
        return written

    if CHUNKED:
        plan = codes()
        fetched = snapshot(plan, fetch_chunk.expand(chunk=plan))
    else:
        fetched = fetch()
    variants = validate(fetched)
    candidates = train.expand(variant=variants)
    forecast(promote(fetched, evaluate(candidates)))


lstm_retrain()
