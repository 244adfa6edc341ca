"""Two `python -m pipeline.sweep` processes on one study: on one journal file, and on a real
PostgreSQL server started for the test. They share the budget: N trials in all, no trial number
twice, every trial under the one parent run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.conftest import free_port
from tests.test_sweep import TINY_TRIAL as TRIAL_OVERRIDES
from tests.test_sweep import write_space

REPO = Path(__file__).resolve().parent.parent
def _debian_pg_bin() -> Path:
    """Debian's server binaries, newest major version first (/usr/lib/postgresql/<major>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = Path(os.environ.get("PG_BIN") or _debian_pg_bin())
N_TRIALS = 4
# Tiny trials on a shared 2-core machine run several times faster on one thread per process.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
# One epoch a trial: what is tested is how the workers share the study, not the training.
ONE_EPOCH = [o for o in TRIAL_OVERRIDES if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=1"]


def start_workers(space: str, cwd: Path, settings: list[str], count: int = 2) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "PYTHONPATH": str(REPO), **ONE_THREAD}
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.sweep", f"hparams_search={space}", *settings],
                              cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def check_shared_study(results, study, uri: str, registered: int = 1) -> None:
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert sum("(created)" in r.stdout for r in results) == 1  # one founder, the other joined
    trials = study.trials
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == N_TRIALS
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    ran = sorted(int(line.split()[1].rstrip(":")) for r in results for line in r.stdout.splitlines()
                 if line.startswith("trial "))
    assert ran == sorted(t.number for t in finished)  # each trial trained by exactly one worker

    client = mlflow.MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(int(r.data.tags["sweep.trial"]) for r in children) == sorted(t.number for t in finished)
    assert len(runs) == 1 + len(children)
    assert len(client.search_model_versions("name='sine-forecaster'")) == registered  # the best, once


@pytest.mark.slow
def test_two_workers_share_one_journal(tmp_path):
    space = write_space(tmp_path / "space.yaml", n_trials=N_TRIALS, overrides=ONE_EPOCH,
                        sampler={"name": "tpe", "seed": 1, "n_startup_trials": 2})
    results = start_workers(space, tmp_path, [])
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna-journal.log")))
    check_shared_study(results, optuna.load_study(study_name="space", storage=storage),
                       f"sqlite:///{tmp_path / 'mlflow.db'}")


def _as_postgres_user() -> list[str]:
    # initdb refuses to run as root (CI containers): the server runs as the `postgres` user.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 and a free port, stopped and removed after."""
    if not (PG_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="sweep-pg-"))  # not under pytest's 0700 folder: the server user reads it
    user = _as_postgres_user()
    if user:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    run = lambda *args: subprocess.run([*user, *args], check=True, capture_output=True, text=True, timeout=120)  # noqa: E731
    try:
        run(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {root} -h 127.0.0.1 -c fsync=off", "start")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    # No model this time (tracking.register=false): registering once is the journal test's part.
    space = write_space(tmp_path / "space.yaml", n_trials=N_TRIALS, overrides=ONE_EPOCH + ["tracking.register=false"],
                        sampler={"name": "tpe", "seed": 1, "n_startup_trials": 2})
    results = start_workers(space, tmp_path, [f"hparams_search.storage={postgres_url}"])
    assert all("postgresql+psycopg2://" in r.stdout for r in results)
    study = optuna.load_study(study_name="space", storage=postgres_url)
    check_shared_study(results, study, f"sqlite:///{tmp_path / 'mlflow.db'}", registered=0)
    assert not (tmp_path / "optuna-journal.log").exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_a_stopped_worker_fails_its_trial_and_a_restart_finishes_the_study(tmp_path, monkeypatch, stop):
    """SIGTERM: the worker fails its trial itself. SIGKILL (or the OOM killer): it cannot, the
    trial stays RUNNING in the journal, and the next worker on this host fails it."""
    import signal
    import time

    space = write_space(tmp_path / "space.yaml", n_trials=1, params={"model.hidden_size": {"int": [4, 8]}},
                        overrides=[o for o in TRIAL_OVERRIDES if not o.startswith("trainer.max_epochs")]
                        # long enough that the signal lands mid-training even on a busy machine
                        + ["trainer.max_epochs=60", "trainer.early_stopping_patience=100"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), **ONE_THREAD}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.sweep", f"hparams_search={space}"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = mlflow.MlflowClient(uri)
    deadline = time.monotonic() + 120
    # Until the trial's run exists: its 60 epochs then take a few seconds, the signal lands in them
    # (metrics are buffered, so waiting for a val curve would wait for the logger's first flush).
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            child = [r for r in client.search_runs(["1"]) if "sweep.trial" in r.data.tags]
        except Exception:  # noqa: BLE001 - the store is still being created
            child = []
        if child:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(getattr(signal, stop))
    out, err = proc.communicate(timeout=60)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna-journal.log")))
    study = optuna.load_study(study_name="space", storage=storage)
    trial_run = [r for r in client.search_runs(["1"]) if "sweep.trial" in r.data.tags][0]
    parent_id = trial_run.data.tags["mlflow.parentRunId"]
    if stop == "SIGTERM":
        assert proc.returncode == 143, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: sweep stopped by SIGTERM")
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
        # named by the trial even when the signal lands before its training saw the run
        assert study.trials[0].user_attrs["mlflow_run_id"] == trial_run.info.run_id
        assert client.get_run(parent_id).info.status == "KILLED"
    else:
        assert proc.returncode == -signal.SIGKILL
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]  # nobody closed it
        assert study.trials[0].user_attrs["worker"]["pid"] == proc.pid

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    from pipeline.sweep.runner import run_sweep

    lines = []
    report = run_sweep(space, echo=lines.append)  # the same command again: the study goes on
    assert report.parent_run_id == parent_id and [o.state for o in report.outcomes] == ["complete"]
    study = optuna.load_study(study_name="space", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    killed = client.get_run(trial_run.info.run_id)
    assert killed.info.status == "KILLED"
    # tagged by the stopped trial itself, or by the worker that found the orphan
    assert killed.data.tags["sweep.trial_state"] == "failed"
    assert client.get_run(parent_id).info.status == "FINISHED"
    orphan_lines = [line for line in lines if "left running by a worker" in line]
    assert len(orphan_lines) == (1 if stop == "SIGKILL" else 0)
