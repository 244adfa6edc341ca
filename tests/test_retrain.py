"""make retrain: every variant trains and registers, the best on the same windows is offered to
promotion, and the summary says what happened. Real Trainer, real sqlite MLflow store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import load_config
from pipeline.errors import ConfigError
from pipeline.retrain import main as retrain_main
from pipeline.retraining.records import Candidate, RetrainSummary
from pipeline.retraining.stages import (
    judged,
    rank,
    retrain,
    retrain_config,
    summary_path,
    variant_overrides,
)
from pipeline.tracking.champion import (
    CHAMPION,
    load_registered_network,
    load_test_windows,
    score_on_windows,
)
from pipeline.tracking.store import open_store
from tests.conftest import TINY

NAME = "sine-forecaster"


def _candidate(variant: str, score: float | None, mase: float | None = None) -> Candidate:
    metrics = {"test/mse": 1.0} if mase is None else {"test/mse": 1.0, "test/mase": mase}
    return Candidate(variant=variant, run_id=f"run-{variant}", run_name=variant, model_name=NAME,
                     version="1", data_digest="d", test_metrics=metrics, score=score)


# --- config and ranking: no training ----------------------------------------------------------


def test_a_variant_uses_its_model_config_with_the_sizes_the_user_set() -> None:
    base = ["model=gru", "model.name=lstm", "model.hidden_size=16", "data=sine"]
    assert variant_overrides(base, "peephole") == ["model.hidden_size=16", "data=sine", "model=peephole"]
    cfg = retrain_config(base, "peephole")
    assert (cfg.model.name, cfg.model.hidden_size) == ("peephole", 16)


@pytest.mark.parametrize(("variants", "why"), [("[]", "at least one"), ("[lstm,lstm]", "twice"),
                                               ("[lstm,nope]", "must be one of")])
def test_bad_variant_lists_are_config_errors(variants: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"retrain.variants.*{why}"):
        load_config("retrain", [f"retrain.variants={variants}"])


def test_by_default_the_summary_goes_to_the_temp_dir_not_the_repo() -> None:
    path = summary_path(retrain_config([]))
    assert path.name == "retrain_summary.json"
    assert path.is_relative_to(Path(tempfile.gettempdir()).resolve())


def test_ranking_puts_eligible_candidates_first_by_score() -> None:
    scored = [judged(_candidate("a", 0.3, mase=0.9), 0.3, 1.0),
              judged(_candidate("b", 0.1, mase=1.2), 0.1, 1.0),  # beats a, loses to naive
              judged(_candidate("c", 0.2), 0.2, 1.0),  # sequence data: no baseline
              judged(_candidate("d", None), None, 1.0)]
    assert [c.variant for c in rank(scored, "minimize")] == ["c", "a", "b", "d"]
    assert [c.variant for c in rank(scored, "maximize")] == ["a", "c", "b", "d"]
    assert "persistence" in scored[1].note and not scored[3].eligible
    assert judged(_candidate("b", 0.1, mase=1.2), 0.1, None).eligible  # gate off


# --- end to end -----------------------------------------------------------------------------------


def _run(store: str, tmp_path: Path, variants: str) -> RetrainSummary:
    return retrain([*TINY, f"retrain.variants={variants}", f"retrain.output_dir={tmp_path / 'out'}"])


def _scores(uri: str, run_id: str, versions: list[str]) -> dict[str, float]:
    tracking = open_store(uri)
    windows = load_test_windows(tracking, run_id)
    return {v: score_on_windows(load_registered_network(tracking, NAME, v), windows, "mse")
            for v in versions}


def _champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


@pytest.mark.slow
def test_retrain_twice_registers_every_variant_and_keeps_the_best_as_champion(store, tmp_path) -> None:
    client = MlflowClient(store)
    first = _run(store, tmp_path, "[lstm,gru]")

    versions = {str(v.version): v for v in client.search_model_versions(f"name='{NAME}'")}
    assert sorted(versions) == ["1", "2"]
    assert {v.tags["variant"] for v in versions.values()} == {"lstm", "gru"}
    runs = client.search_runs([client.get_experiment_by_name("sine").experiment_id])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    # retrain promotes once, after comparing: no version carries a decision but the best one
    decided = [v for v in versions.values() if "promotion.promoted" in v.tags]
    assert [str(v.version) for v in decided] == [first.decision["version"]]

    scores = _scores(store, runs[0].info.run_id, ["1", "2"])
    best = min(scores, key=scores.get)
    assert first.promoted and _champion(client) == best == first.champion
    assert first.decision["reason"].startswith("first version")

    written = json.loads((tmp_path / "out" / "retrain_summary.json").read_text())
    assert written == json.loads(json.dumps(first.as_dict()))
    assert written["best"] == versions[best].tags["variant"]
    assert [c["version"] for c in written["candidates"]] == sorted(scores, key=scores.get)
    for candidate in written["candidates"]:
        assert candidate["score"] == pytest.approx(scores[candidate["version"]])
        assert candidate["test_metrics"]["test/mse"] > 0
        assert candidate["data_digest"] == written["data_digest"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db", "out"]

    # Again, with another set of variants: new versions, and the alias moves only to a version
    # that beats the champion on the same windows.
    second = _run(store, tmp_path, "[gru,rnn]")
    assert sorted(str(v.version) for v in client.search_model_versions(f"name='{NAME}'")) == ["1", "2", "3", "4"]
    assert {c["variant"] for c in second.candidates} == {"gru", "rnn"}
    scores = _scores(store, second.candidates[0]["run_id"], ["1", "2", "3", "4"])
    if second.promoted:
        assert second.decision["candidate_score"] < second.decision["champion_score"]
    else:
        assert second.champion == first.champion
    assert scores[_champion(client)] == pytest.approx(min(scores.values()))


@pytest.mark.slow
def test_a_bad_variant_stops_in_one_line_before_anything_trains(store, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        retrain_main([*TINY, "retrain.variants=[lstm,nope]", f"retrain.output_dir={tmp_path / 'out'}"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: retrain.variants='nope': must be one of coupled, gru, lstm, peephole, rnn, seq2seq"]
    client = MlflowClient(store)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_candidate_no_better_than_persistence_is_registered_but_never_promoted(store, tmp_path) -> None:
    summary = retrain([*TINY, "data.mode=forecast", "data.burn_in=0", "retrain.variants=[gru]",
                       "retrain.max_mase=0.001", f"retrain.output_dir={tmp_path / 'out'}"])
    (candidate,) = summary.candidates
    assert candidate["test_metrics"]["test/mase"] >= 0.001  # the baselines were scored beside it
    assert not candidate["eligible"] and "persistence" in candidate["note"]
    assert summary.decision is None and summary.champion is None and not summary.promoted
    client = MlflowClient(store)
    assert [str(v.version) for v in client.search_model_versions(f"name='{NAME}'")] == ["1"]
    assert client.get_registered_model(NAME).aliases == {}
