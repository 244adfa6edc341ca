"""A worker: check everything, join (or create) the study, run trials until the study's budget
is spent, and, if no other worker still has a trial running, write the study's summary.

The budget counts complete and pruned trials of every worker together (plus those running now,
so workers do not overshoot it); failed and interrupted trials do not count, so a sweep stopped
by Ctrl-C or SIGTERM continues, when started again with the same command, until `n_trials`
trials are done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.config import tracking_store
from pipeline.distributed import is_global_zero
from pipeline.errors import TrackingError, TrainingInterrupted
from pipeline.sweep.ddp import check_launch, follow, share
from pipeline.sweep.orphans import fail_orphaned_trials
from pipeline.sweep.space import SearchSpace, load_search_space
from pipeline.sweep.storage import default_storage, open_storage, public_name
from pipeline.sweep.study import StudyHandle, check_joinable, find_study, open_study
from pipeline.sweep.summary import SweepSummary, counts, summarize
from pipeline.sweep.trials import (
    BUDGET_SPENT,
    STATE_TAG,
    TRIAL_TAG,
    Objective,
    TrialFailed,
    TrialOutcome,
)
from pipeline.tracking.run import raise_if_stopped, sigterm_raises

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3


@dataclass
class SweepReport:
    study: str
    parent_run_id: str
    storage: str  # credentials scrubbed
    outcomes: list[TrialOutcome] = field(default_factory=list)
    summary: SweepSummary | None = None  # None when another worker still has trials running
    timings: dict[str, float] = field(default_factory=dict)


def prepare(search: str, settings: Sequence[str], overrides: Sequence[str]):
    """Everything checked, nothing written: the space, the base config, the storage, the store."""
    space, base = load_search_space(search, settings, overrides)
    check_launch(base.trainer.devices, base.trainer.num_nodes)
    storage = space.config.storage or default_storage(base.tracking.uri)
    storage_obj = open_storage(storage)
    store = tracking_store(base.tracking)
    existing = find_study(storage_obj, space.study_name)
    if existing is not None:
        check_joinable(existing, space, store)
    store.check()
    return space, base, storage, storage_obj, store


def run_sweep(search: str, settings: Sequence[str] = (), overrides: Sequence[str] = (),
              echo=print) -> SweepReport | None:
    """One worker's sweep; None on DDP ranks other than zero (rank zero reports)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours (trial_line)
    started = time.perf_counter()
    if not is_global_zero():
        # A DDP rank other than zero: it trains what rank zero sends and touches no storage.
        space, base = load_search_space(search, settings, overrides)
        check_launch(base.trainer.devices, base.trainer.num_nodes)
        follow(space)
        return None
    space, base, storage, storage_obj, store = prepare(search, settings, overrides)
    handle = open_study(space, base, storage_obj, storage, store)
    report = SweepReport(space.study_name, handle.parent.run_id, public_name(storage))
    echo(f"study:   {space.study_name} ({'created' if handle.founder else 'joined'}) in "
         f"{report.storage}; parent run {handle.parent.run_name} (id {handle.parent.run_id})")
    for number in fail_orphaned_trials(handle, TRIAL_TAG, STATE_TAG):
        echo(f"trial:   {number} was left running by a worker of this host that is gone; marked failed")
    objective = Objective(handle, admit=lambda trial: within_budget(handle, trial))
    report.outcomes = objective.outcomes
    prepared_at = time.perf_counter()
    try:
        with sigterm_raises():
            try:
                work(handle, objective, echo)
            finally:
                share(None)  # DDP trials: the other ranks stop (ddp.py)
    except (KeyboardInterrupt, SystemExit, TrainingInterrupted) as exc:
        stop_parent_if_idle(handle)
        raise TrainingInterrupted(f"sweep stopped by {_signal_name(exc)}; the running trial is marked failed; "
                                  f"start the same command again to continue study {space.study_name!r}") from None
    worked_at = time.perf_counter()
    if counts(handle.study)["running"] == 0:
        report.summary = summarize(handle)
        handle.parent.client.set_terminated(handle.parent.run_id, "FINISHED")
    report.timings = {"prepare_s": prepared_at - started, "trials_s": worked_at - prepared_at,
                      "summary_s": time.perf_counter() - worked_at}
    return report


def remaining(handle: StudyHandle) -> int:
    n = counts(handle.study)
    return handle.space.config.n_trials - (n["complete"] + n["pruned"] + n["running"])


def within_budget(handle: StudyHandle, trial) -> bool:
    """Two workers can ask for the last slot at once: the trial with the lower number gets it."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    before = sum(t.state in counted and t.number < trial.number
                 for t in handle.study.get_trials(deepcopy=False))
    return before < handle.space.config.n_trials


def work(handle: StudyHandle, objective: Objective, echo) -> None:
    timeout = handle.space.config.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    while remaining(handle) > 0 and (deadline is None or time.monotonic() < deadline):
        raise_if_stopped()  # a SIGTERM whose raise was lost stops the worker before the next trial
        seen = len(objective.outcomes)
        handle.study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        if len(objective.outcomes) == seen:
            break  # Optuna ended the trial before our objective ran: nothing of ours to report
        outcome = objective.outcomes[-1]
        if outcome.error == BUDGET_SPENT:
            echo(f"budget:  spent by the other workers; trial {outcome.number} closed without training")
            break
        echo(trial_line(handle.space, outcome, handle.study))
        failures = failures + 1 if outcome.state == "failed" else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            raise TrackingError(f"{failures} trials in a row failed, the last with: {outcome.error}; "
                                "fix the cause and start the sweep again")


def trial_line(space: SearchSpace, outcome: TrialOutcome, study) -> str:
    trial = study.get_trials(deepcopy=False)[outcome.number]
    params = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    value = f"{space.config.objective}={outcome.value:.6g}" if outcome.value is not None else ""
    why = f" ({outcome.error})" if outcome.error else ""
    return f"trial {outcome.number:>3}: {outcome.state:<8} {value:<22} {outcome.seconds:6.1f} s  {params}{why}"


def stop_parent_if_idle(handle: StudyHandle) -> None:
    """The parent stays (its study goes on when started again); KILLED until then, unless another
    worker is still at work."""
    try:
        if counts(handle.study)["running"] == 0:
            handle.parent.client.set_terminated(handle.parent.run_id, "KILLED")
    except Exception as exc:  # noqa: BLE001 - on the way out: the interruption is what to report
        log.warning("parent run not marked KILLED: %s", exc)


def _signal_name(exc: BaseException) -> str:
    return "SIGTERM" if "SIGTERM" in str(exc) or type(exc).__name__ == "SIGTERMException" else "SIGINT"


def summary_lines(report: SweepReport) -> list[str]:
    lines = [f"parent:  run {report.parent_run_id} (study {report.study}, storage {report.storage})"]
    s = report.summary
    if s is None:
        return [*lines, "summary: other workers still have trials running; the last to finish writes it"]
    lines.append(f"trials:  {s.complete} complete, {s.pruned} pruned, {s.failed} failed")
    if s.best_trial is None:
        return [*lines, "best:    none (no trial completed)"]
    params = " ".join(f"{k}={v}" for k, v in s.best_params.items())
    lines.append(f"best:    trial {s.best_trial} value {s.best_value:.6g}  {params}  (run {s.best_run_id})")
    if s.model_version:
        verdict = "" if s.promoted is None else f" ({'now @champion' if s.promoted else 'not promoted'}: {s.promotion_reason})"
        lines.append(f"model:   {s.model_name} version {s.model_version}{verdict}")
    lines.append("browse:  make ui   ->  http://127.0.0.1:5000")
    return lines
