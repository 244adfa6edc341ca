"""One trial: the sampled overrides composed into the normal training config
(pipeline.cli.load_config) and run by the normal training (pipeline.training.train), in this
process, as a child run of the study's parent. The trial's value is the best per-epoch value of
the objective (a validation metric) its TrialReporter saw.

States, on the trial and as the child run's `sweep.trial_state` tag:
- complete: trained, tested, artifacts and best checkpoint logged (no model: summary.py logs
  and registers the best trial's model from that checkpoint at the end);
- pruned: stopped by the pruner after some epoch; curves kept, nothing tested or registered;
- failed: a sampled combination the schema refuses, an error, or Ctrl-C/SIGTERM (the run is
  KILLED and the study goes on from there when the sweep is started again). Failed trials do not
  count against the budget.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pipeline.cli import load_config
from pipeline.errors import ConfigError, PipelineError, TrainingInterrupted
from pipeline.secrets import scrub_text
from pipeline.sweep.ddp import share
from pipeline.sweep.orphans import WORKER_ATTR, this_worker, trial_runs
from pipeline.sweep.pruning import TrialReporter
from pipeline.sweep.study import StudyHandle

log = logging.getLogger(__name__)

STATE_TAG = "sweep.trial_state"
TRIAL_TAG = "sweep.trial"
RUN_ATTR = "mlflow_run_id"
OVERRIDES_ATTR = "overrides"


class TrialFailed(Exception):
    """This trial failed (recorded as FAIL); the study goes on with the next."""


BUDGET_SPENT = "budget spent"  # a trial asked for after other workers spent the budget


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete | pruned | failed
    value: float | None
    run_id: str | None
    seconds: float
    error: str | None = None
    # seconds before fit (config, data, run, trainer), in fit, after fit (test, artifacts, tags)
    setup_s: float | None = None
    fit_s: float | None = None
    publish_s: float | None = None


class Objective:
    """What study.optimize calls for each trial: Optuna then does the ask and tell, the
    heartbeat of database storages, and marks the trial FAIL on any exception, re-raising the
    ones that are not TrialFailed (Ctrl-C, SIGTERM), so the worker stops and the study is left
    to be continued."""

    def __init__(self, handle: StudyHandle, admit=None) -> None:
        self.handle = handle
        self.admit = admit  # trial -> bool: False when the budget was spent by other workers
        self.outcomes: list[TrialOutcome] = []

    def __call__(self, trial) -> float:
        import optuna

        started = time.perf_counter()
        if self.admit is not None and not self.admit(trial):
            trial.set_user_attr("error", "not run: the study's budget was spent by other workers")
            # Recorded like any trial, so the worker's loop reads this outcome, not the last one.
            self.outcomes.append(TrialOutcome(trial.number, "failed", None, None, 0.0, BUDGET_SPENT))
            raise TrialFailed(BUDGET_SPENT)
        reporter, state, value, error = None, "failed", None, None
        trial.set_user_attr(WORKER_ATTR, this_worker())  # who to ask if it is left running
        try:
            reporter = self._reporter(trial)
            value = self._train(trial, reporter)
            state = "complete"
            return value
        except optuna.TrialPruned:
            state, value = "pruned", reporter.best
            raise
        except TrialFailed as exc:
            error = str(exc)
            raise
        except (KeyboardInterrupt, SystemExit, PipelineError) as exc:
            error = "interrupted" if _is_interrupt(exc) else scrub_text(str(exc))
            if isinstance(exc, SystemExit):
                # Optuna marks a trial FAIL on Exception and KeyboardInterrupt only; SIGTERM
                # (Lightning's SIGTERMException is a SystemExit) would leave it RUNNING.
                raise TrainingInterrupted("training stopped by SIGTERM") from None
            if _is_interrupt(exc):
                raise
            raise TrialFailed(error) from None
        except Exception as exc:  # noqa: BLE001 - one trial's crash is recorded, the study goes on
            log.exception("trial %d failed", trial.number)
            error = f"{type(exc).__name__}: {scrub_text(str(exc))}"
            raise TrialFailed(error) from None
        finally:
            self._record(trial, reporter, state, value, error, started)

    def _reporter(self, trial) -> TrialReporter:
        space = self.handle.space
        return TrialReporter(trial, space.config.objective, space.config.direction)

    def _train(self, trial, reporter: TrialReporter) -> float:
        import optuna

        from pipeline.training import train  # lazy: the CLI checks its input before Lightning loads

        space = self.handle.space
        sampled = space.sample(trial)
        trial.set_user_attr(OVERRIDES_ATTR, sampled)
        share(sampled)  # DDP trials: the other ranks train the same overrides (ddp.py)
        try:
            cfg = load_config("train", space.training_overrides(sampled))
        except ConfigError as exc:
            # A combination a cross-field rule refuses (each bound alone passed): the study goes on.
            raise TrialFailed(f"refused: {exc}") from None
        tags = {"sweep.study": space.study_name, TRIAL_TAG: str(trial.number), STATE_TAG: "running"}
        train(cfg, callbacks=[reporter], parent_run_id=self.handle.parent.run_id, tags=tags, log_model=False)
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after {reporter.reported} epochs")
        if reporter.best is None:
            raise TrialFailed(f"the objective {space.config.objective} was never logged")
        return reporter.best

    def _record(self, trial, reporter: TrialReporter | None, state: str, value: float | None,
                error: str | None, started: float) -> None:
        run_id = reporter.run_id if reporter else None
        if run_id is None and state == "failed":
            # Stopped before its training named the run (a SIGTERM in the set-up): find it.
            found = trial_runs(self.handle, trial.number, TRIAL_TAG)
            run_id = found[0].info.run_id if found else None
        if run_id:
            trial.set_user_attr(RUN_ATTR, run_id)
            client = self.handle.parent.client
            client.set_tag(run_id, STATE_TAG, state)
            if value is not None:
                client.set_tag(run_id, "sweep.value", f"{value:.6g}")
        if error:
            trial.set_user_attr("error", error[:500])
        ended = time.perf_counter()
        outcome = TrialOutcome(trial.number, state, value, run_id, ended - started, error)
        if reporter is not None and reporter.fit_started and reporter.fit_ended:
            outcome.setup_s = reporter.fit_started - started
            outcome.fit_s = reporter.fit_ended - reporter.fit_started
            outcome.publish_s = ended - reporter.fit_ended
        self.outcomes.append(outcome)


def _is_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt | SystemExit | TrainingInterrupted)
