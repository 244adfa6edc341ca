"""Trainings that start together on one tracking server: what each does first must not fail
because the others do the same at the same moment."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import types

import pandas as pd
import pytest

from pipeline.tracking.run import RunHandle
from pipeline.tracking.store import open_store
from tests.test_store_server_loss import MlflowServer

pytestmark = pytest.mark.slow
PROCESSES, ROUNDS = 8, 4


def _log_one_dataset(uri: str, experiment_id: str, run_id: str, barrier, answers) -> None:
    from pipeline.tracking.datasets import log_dataset

    handle = RunHandle(open_store(uri), run_id, "race", experiment_id, "race")
    data = types.SimpleNamespace(frame=pd.DataFrame({"x": [1.0, 2.0, 3.0]}), digest="5a67", source="sine")
    barrier.wait()  # all insert at once: the moment two trainings on new data meet
    try:
        log_dataset(handle, data)
        answers.put("ok")
    except Exception as exc:  # noqa: BLE001 - the answer is what failed, for the assertion
        answers.put(f"{type(exc).__name__}: {str(exc)[:300]}")


def test_runs_that_log_the_same_new_dataset_at_once_all_succeed_and_share_it(tmp_path) -> None:
    # MLflow looks the dataset up, then inserts it: without a retry, one run in eight or so
    # loses that race in about one round of three on this machine, with a UNIQUE constraint error.
    server = MlflowServer(tmp_path / "server")
    server.start()
    # A fork server that has imported MLflow and holds no connection: quick, clean children.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pandas", "mlflow.tracking", "mlflow.store.tracking.rest_store",
                                    "mlflow.data", "pipeline.tracking.datasets", "pipeline.tracking.run"])
    try:
        client = open_store(server.uri).client
        for round_ in range(ROUNDS):
            experiment = client.create_experiment(f"race-{round_}")
            runs = [client.create_run(experiment).info.run_id for _ in range(PROCESSES)]
            barrier, answers = context.Barrier(PROCESSES), context.Queue()
            workers = [context.Process(target=_log_one_dataset,
                                       args=(server.uri, experiment, run, barrier, answers))
                       for run in runs]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(timeout=300)
            assert [answers.get(timeout=5) for _ in workers] == ["ok"] * PROCESSES
            inputs = [client.get_run(run).inputs.dataset_inputs for run in runs]
            assert all(len(found) == 1 for found in inputs)
            assert {found[0].dataset.digest for found in inputs} == {"5a67"}
    finally:
        server.stop()


def test_importing_the_pipeline_turns_mlflow_telemetry_off_unless_the_user_chose() -> None:
    # Telemetry's background thread edits os.environ while tracking requests read it (a
    # KeyError under concurrent trainings, offline); the pipeline keeps it off by default.
    probe = ("import pipeline, mlflow; from mlflow.telemetry.client import get_telemetry_client; "
             "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], get_telemetry_client() is None)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK") and "PYTEST" not in k}
    default = subprocess.run([sys.executable, "-c", f"import os; {probe}"], env=env,
                             capture_output=True, text=True, check=True)
    assert default.stdout.split() == ["true", "True"]
    chosen = subprocess.run([sys.executable, "-c", f"import os; {probe}"],
                            env={**env, "MLFLOW_DISABLE_TELEMETRY": "false"},
                            capture_output=True, text=True, check=True)
    assert chosen.stdout.split()[0] == "false"  # the user's choice is kept
