"""The buffered logger: batches, flushes on every way out, keeps metrics while the server is away."""

from __future__ import annotations

import time

import pytest
import requests
from mlflow.exceptions import MlflowException

from pipeline.tracking.logger import UNSENT_FILE, BufferedMLFlowLogger
from pipeline.tracking.run import RunHandle, open_run
from pipeline.tracking.store import Outage, ServerLost, open_store
from tests.conftest import free_port


@pytest.fixture(autouse=True)
def state_home(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return open_store(f"sqlite:///{tmp_path_factory.mktemp('logger') / 'm.db'}")  # one: a run per test


@pytest.fixture
def handle(store) -> RunHandle:
    return open_run(store, "buf", "buffered", {}, {"a": 1})


def _history(handle: RunHandle, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in handle.client.get_metric_history(handle.run_id, key))


def test_buffered_logger_writes_in_batches_and_on_a_stop(handle) -> None:
    logger = BufferedMLFlowLogger(handle, flush_every_s=3600)
    for step in range(5):
        logger.log_metrics({"train/loss": 1.0 / (step + 1), "epoch": step}, step=step)
    assert _history(handle, "train/loss") == []  # still buffered
    logger.finalize("failed")  # Lightning calls this when training stops (error, SIGTERM, Ctrl-C)
    assert _history(handle, "train/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    # the run's status is run_guard's to set, not the logger's
    assert handle.client.get_run(handle.run_id).info.status == "RUNNING"


def test_zero_interval_writes_every_call(handle) -> None:
    logger = BufferedMLFlowLogger(handle, flush_every_s=0)
    logger.log_metrics({"val/loss": 0.5}, step=7)
    assert _history(handle, "val/loss") == [(7, 0.5)]


def test_module_hparams_become_params_and_a_resumed_run_keeps_its_own(handle) -> None:
    BufferedMLFlowLogger(handle).log_hyperparams({"lr": 0.01, "spec": {"hidden_size": 16}})
    BufferedMLFlowLogger(handle).log_hyperparams({"lr": 0.5, "spec": {"hidden_size": 16}})
    params = handle.client.get_run(handle.run_id).data.params
    assert params["lr"] == "0.01" and params["spec/hidden_size"] == "16"


def _unreachable(exc_type=requests.exceptions.ConnectionError):
    """What MLflow raises for a server that is not there: its exception around requests'."""
    def call():
        try:
            raise exc_type("connection refused")
        except exc_type as inner:
            raise MlflowException(f"API request failed with exception {inner}") from None
    return call


def test_an_outage_is_waited_out_for_a_bounded_time() -> None:
    outage = Outage("http://server", retry_for_s=1.5)
    assert outage.attempt(_unreachable()) is False  # one try, no wait: the caller keeps its data
    assert outage.down_since is not None
    start = time.monotonic()
    with pytest.raises(ServerLost, match=r"has not answered for \d+ s \(tracking.retry_for_s=1.5\)"):
        outage.call(_unreachable())
    assert time.monotonic() - start < 10
    with pytest.raises(ServerLost):  # once given up, no more waiting
        outage.attempt(_unreachable())
    assert outage.call(lambda: 42) == 42  # the server is back
    assert outage.down_since is None and not outage.given_up


def test_an_outage_that_ends_in_time_costs_nothing() -> None:
    outage = Outage("http://server", retry_for_s=30)
    failures = iter([True, True, False])

    def flaky():
        if next(failures):
            _unreachable()()
        return "done"

    assert outage.call(flaky) == "done"
    assert outage.down_since is None


def test_other_errors_are_not_retried() -> None:
    outage = Outage("http://server", retry_for_s=30)
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        outage.call(lambda: (_ for _ in ()).throw(MlflowException("RESOURCE_DOES_NOT_EXIST")))
    assert outage.down_since is None


def test_metrics_a_lost_server_never_took_are_kept_and_sent_by_the_resumed_run(
        tmp_path, handle, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once: a quicker test
    # `handle`: the run, in a store that works
    lost_store = open_store(f"http://127.0.0.1:{free_port()}", retry_for_s=1)  # nothing listens
    lost = RunHandle(lost_store, handle.run_id, handle.run_name, handle.experiment_id,
                     handle.experiment_name)
    spill_dir = tmp_path / "ckpt"
    logger = BufferedMLFlowLogger(lost, flush_every_s=0, spill_dir=spill_dir)
    logger.log_metrics({"train/loss": 0.9}, step=1)  # the server does not answer: kept
    logger.log_metrics({"train/loss": 0.8}, step=2)  # within the backoff: not even tried
    assert len(logger._pending) == 2
    time.sleep(1.1)
    with pytest.raises(ServerLost):
        logger.flush(force=True)
    logger.finalize("failed")  # the stop: what is unsent goes beside the checkpoint
    assert (spill_dir / UNSENT_FILE).is_file()

    resumed = BufferedMLFlowLogger(handle, flush_every_s=0, spill_dir=spill_dir)
    resumed.log_metrics({"train/loss": 0.7}, step=3)
    assert _history(handle, "train/loss") == [(1, 0.9), (2, 0.8), (3, 0.7)]
    assert not (spill_dir / UNSENT_FILE).exists()
