"""Champion/challenger promotion against a real sqlite store with real trained versions."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time

import pytest

from pipeline.tracking.champion import (
    CHAMPION,
    decide,
    load_test_windows,
    promote_if_better,
    score_on_windows,
)
from pipeline.tracking.pyfunc import load_registered_network
from pipeline.tracking.store import open_store
from tests.conftest import TINY, compose_config

pytestmark = pytest.mark.slow
NAME = "sine-forecaster"


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _train(epochs: int, promote_on_finish: bool = False, seed: int = 0):
    from pipeline.training import train

    cfg = compose_config(*TINY, f"trainer.max_epochs={epochs}", f"seed={seed}",
                         f"promotion.enabled={str(promote_on_finish).lower()}")
    return train(cfg)


def _scores_on(store, run_id: str, versions: list[str]) -> dict[str, float]:
    windows = load_test_windows(store, run_id)
    return {v: score_on_windows(load_registered_network(store, NAME, v), windows, "mse") for v in versions}


def _champion(store) -> str:
    return str(store.client.get_model_version_by_alias(NAME, CHAMPION).version)


def test_first_version_becomes_champion_and_a_worse_one_does_not(store) -> None:
    tracking = open_store(store)
    good = _train(epochs=6, promote_on_finish=True)
    assert good.promotion.promoted and good.promotion.reason.startswith("first version")
    assert _champion(tracking) == good.model_version

    worse = _train(epochs=1)  # one epoch: far from converged
    decision = promote_if_better(tracking, NAME, worse.model_version)
    scores = _scores_on(tracking, worse.run_id, [good.model_version, worse.model_version])
    assert scores[worse.model_version] > scores[good.model_version]
    assert not decision.promoted
    assert decision.champion_version == good.model_version
    assert decision.candidate_score == pytest.approx(scores[worse.model_version])
    assert decision.champion_score == pytest.approx(scores[good.model_version])
    assert _champion(tracking) == good.model_version
    tags = tracking.client.get_model_version(NAME, worse.model_version).tags
    assert tags["promotion.promoted"] == "False"
    assert float(tags["promotion.champion_score"]) == pytest.approx(scores[good.model_version])

    # the other way round: the better version takes the alias from a worse champion
    tracking.client.set_registered_model_alias(NAME, CHAMPION, worse.model_version)
    assert promote_if_better(tracking, NAME, good.model_version).promoted
    assert _champion(tracking) == good.model_version

    # a metric the windows cannot give is never promoted, with its reason (mape is undefined on
    # a sine that crosses zero)
    tracking.client.set_registered_model_alias(NAME, CHAMPION, worse.model_version)
    refused = promote_if_better(tracking, NAME, good.model_version, metric="mape")
    assert not refused.promoted and refused.candidate_score is None
    assert "cannot be scored by mape" in refused.reason
    assert _champion(tracking) == worse.model_version


def _promote_in_child(uri: str, version: str, delay_s: float, locked: bool, start, decided) -> None:
    """One promotion in its own process. The race is forced, not left to chance: after reading
    the champion each promotion waits until the other has read it too (or 15 s, which is what
    happens when the lock keeps the other out), then `delay_s` more before moving the alias.
    locked=False (the control) removes the lock."""
    import threading

    import pipeline.tracking.champion as champion
    from pipeline.tracking.store import Store

    decide_now = champion.decide

    def decide_then_wait(*args, **kwargs):
        decision = decide_now(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            decided.wait(timeout=15)
        time.sleep(delay_s)
        return decision

    champion.decide = decide_then_wait
    if not locked:
        Store.lock = lambda self, *a, **k: contextlib.nullcontext()
    start.wait()
    champion.promote_if_better(open_store(uri), NAME, version)


def _race(uri: str, offers: dict[str, float], locked: bool) -> None:
    ctx = mp.get_context("spawn")
    start, decided = ctx.Barrier(len(offers)), ctx.Barrier(len(offers))
    procs = [ctx.Process(target=_promote_in_child, args=(uri, version, delay, locked, start, decided))
             for version, delay in offers.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0


def test_concurrent_promotions_leave_the_alias_on_the_better_model(store) -> None:
    tracking = open_store(store)
    first = _train(epochs=1, promote_on_finish=True, seed=1)
    best = _train(epochs=6, seed=2)
    middle = _train(epochs=3, seed=3)
    versions = [first.model_version, best.model_version, middle.model_version]
    # Judge by scores on one common window set (every run here saw the same data).
    scores = _scores_on(tracking, middle.run_id, versions)
    assert scores[best.model_version] < scores[middle.model_version] < scores[first.model_version]
    # Both challengers beat the champion v1 they read; the worse one would move the alias last.
    # Without the lock (locked=False) both promote and the worse one ends as champion, every time.
    offers = {best.model_version: 0.0, middle.model_version: 2.0}
    _race(store, offers, locked=True)
    assert _champion(tracking) == best.model_version
    # the one that went second saw the other's promotion and judged against it
    decisions = {v: decide(tracking, NAME, v, "mse", "minimize") for v in offers}
    assert decisions[best.model_version].reason == "already the champion"
    assert decisions[middle.model_version].champion_version == best.model_version
