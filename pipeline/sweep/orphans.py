"""Trials a dead worker left RUNNING: found, marked failed, their MLflow runs KILLED.

A worker killed outright (kill -9, the OOM killer, a lost machine) cannot close its trial. A
database storage's heartbeat fails such trials by itself; a journal has none, and a RUNNING
trial keeps a slot of the budget for ever, so the study would never end nor be summarised.
Each trial records the host and process id of its worker (WORKER_ATTR); a worker starting on
the same host fails the trials whose process is gone. A trial of another host is left alone:
a journal lives on one machine, and a database storage has its heartbeat.
"""

from __future__ import annotations

import os
import socket

WORKER_ATTR = "worker"


def this_worker() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process (a reused pid)
    return True


def orphaned(trial, host: str) -> bool:
    worker = trial.user_attrs.get(WORKER_ATTR) or {}
    return worker.get("host") == host and isinstance(worker.get("pid"), int) \
        and not process_exists(worker["pid"])


def fail_orphaned_trials(handle, trial_tag: str, state_tag: str) -> list[int]:
    """Fail this host's RUNNING trials whose worker process is gone; their numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    running = handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    numbers = [trial.number for trial in running if orphaned(trial, host)]
    for number in numbers:
        handle.study.tell(number, state=TrialState.FAIL)
        _kill_trial_run(handle, number, trial_tag, state_tag)
    return numbers


def trial_runs(handle, number: int, trial_tag: str) -> list:
    """The MLflow runs of trial `number` under the study's parent run (found by their tags, for
    a trial that stopped before its training could name its run)."""
    parent = handle.parent
    return parent.client.search_runs([parent.experiment_id],
                                     f"tags.mlflow.parentRunId = '{parent.run_id}' and "
                                     f"tags.`{trial_tag}` = '{number}'")


def _kill_trial_run(handle, number: int, trial_tag: str, state_tag: str) -> None:
    client = handle.parent.client
    for run in trial_runs(handle, number, trial_tag):
        client.set_tag(run.info.run_id, state_tag, "failed")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
