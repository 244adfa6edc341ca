"""Champion/challenger promotion against a real sqlite store with real trained versions."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.registry import (
    CHAMPION,
    load_registered_network,
    load_test_windows,
    promote,
    score_on_windows,
)
from pipeline.train import train
from tests.conftest import TINY, compose_config

pytestmark = pytest.mark.slow
NAME = "sine-forecaster"


def _train(epochs: int, promote_on_finish: bool = False, seed: int = 0):
    cfg = compose_config(*TINY, f"trainer.max_epochs={epochs}", f"seed={seed}",
                         f"promotion.enabled={str(promote_on_finish).lower()}")
    return train(cfg)


def _scores_on(client: MlflowClient, run_id: str, versions: list[str]) -> dict[str, float]:
    windows = load_test_windows(client, run_id)
    return {v: score_on_windows(load_registered_network(NAME, v), windows, "mse") for v in versions}


def test_first_version_becomes_champion_and_a_worse_one_does_not(store) -> None:
    client = MlflowClient(store)
    good = _train(epochs=6, promote_on_finish=True)
    assert good.promotion.promoted and good.promotion.reason.startswith("first version")
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == good.model_version

    worse = _train(epochs=1)  # one epoch: far from converged
    decision = promote(client, NAME, worse.model_version)
    scores = _scores_on(client, worse.run_id, [good.model_version, worse.model_version])
    assert scores[worse.model_version] > scores[good.model_version]
    assert not decision.promoted
    assert decision.champion_version == good.model_version
    assert decision.candidate_score == pytest.approx(scores[worse.model_version])
    assert decision.champion_score == pytest.approx(scores[good.model_version])
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == good.model_version
    tags = client.get_model_version(NAME, worse.model_version).tags
    assert tags["promotion.promoted"] == "False"
    assert float(tags["promotion.champion_score"]) == pytest.approx(scores[good.model_version])

    # the other way round: the better version takes the alias from a worse champion
    client.set_registered_model_alias(NAME, CHAMPION, worse.model_version)
    assert promote(client, NAME, good.model_version).promoted
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == good.model_version


def _promote_in_process(uri: str, version: str, barrier) -> None:
    barrier.wait()
    promote(MlflowClient(uri), NAME, version)


def test_concurrent_promotions_leave_the_alias_on_the_better_model(store) -> None:
    client = MlflowClient(store)
    first = _train(epochs=1, promote_on_finish=True, seed=1)
    a = _train(epochs=6, seed=2)
    b = _train(epochs=3, seed=3)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_promote_in_process, args=(store, v, barrier))
             for v in (a.model_version, b.model_version)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    # Judge by scores on one common window set (the later run's windows are the same data here).
    scores = _scores_on(client, b.run_id, [first.model_version, a.model_version, b.model_version])
    best = min(scores, key=scores.get)
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == best
