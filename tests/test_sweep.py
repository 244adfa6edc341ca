"""`make sweep` in-process: a real Optuna study over a real sqlite MLflow store, trained by the real
Lightning Trainer on tiny configs; and the refusals, which must write nothing."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from pipeline.sweep.__main__ import main
from pipeline.sweep.runner import run_sweep
from pipeline.sweep.storage import JOURNAL_FILE

# Tiny trials: 300 points of sine, two epochs of an 8-unit network.
TINY_TRIAL = ["data.params.points=300", "data.lookback=20", "model.hidden_size=8",
              "trainer.max_epochs=2", "trainer.early_stopping_patience=0",
              "trainer.progress_bar=false", "trainer.model_summary=false"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny trials run several times faster on one torch thread on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_space(path: Path, **changes) -> str:
    """A search space of its own for a test (hparams_search=<file>.yaml)."""
    space = {"objective": "val/loss", "direction": "minimize", "n_trials": 4,
             "sampler": {"name": "random", "seed": 3},
             # Trial 0 finishes; any later trial worse than it after an epoch is pruned.
             "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
             "overrides": TINY_TRIAL,
             # lr=3 wrecks the weights in a few steps: such a trial is far behind after an epoch.
             "params": {"optim.lr": {"categorical": [0.03, 3.0]},
                        "model.name": {"categorical": ["lstm", "gru"]}}}
    space.update(changes)
    path.write_text(yaml.safe_dump(space))
    return str(path)


def runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def refusal(capsys, args: list[str]) -> str:
    capsys.readouterr()  # what earlier steps of the test printed
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: "), err
    return err


def test_sweep_nests_trials_prunes_and_registers_the_best(store, tmp_path):
    space = write_space(tmp_path / "space.yaml")
    # Seed 11 draws (lr, model): (0.03, gru), (3.0, gru), (0.03, lstm): complete, pruned, complete.
    report = run_sweep(space, ["sampler.seed=11", "n_trials=3"])
    summary = report.summary
    assert summary is not None
    assert summary.complete + summary.pruned == 3 and summary.failed == 0
    assert [o.state for o in report.outcomes] == ["complete", "pruned", "complete"]

    client = mlflow.MlflowClient(store)
    all_runs = runs(store)
    parents = [r for r in all_runs if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == report.parent_run_id and parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["sweep.study"] == "space" and tags["sweep.sampler"].startswith("random(seed=11")
    assert tags["sweep.pruner"].startswith("median(") and tags["sweep.storage"].endswith(JOURNAL_FILE)
    children = [r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["sweep.trial"]) for r in children) == [0, 1, 2]

    states = {o.number: o.state for o in report.outcomes}
    for child in children:
        state = child.data.tags["sweep.trial_state"]
        assert state == states[int(child.data.tags["sweep.trial"])]
        assert "val/loss" in child.data.metrics  # its own curves
        if state == "pruned":
            assert not any(k.startswith("test/") for k in child.data.metrics)
            assert "sweep.registered_version" not in child.data.tags
            assert len(client.get_metric_history(child.info.run_id, "val/loss")) == 1  # stopped early
        else:
            assert "test/mse" in child.data.metrics

    # The best trial's run holds the one registered version; the parent names it.
    best = min((o for o in report.outcomes if o.state == "complete"), key=lambda o: o.value)
    assert summary.best_trial == best.number and tags["best.run_id"] == best.run_id
    assert tags["best.value"] == f"{best.value:.6g}"
    assert tags["best.optim.lr"] == str(summary.best_params["optim.lr"])
    versions = client.search_model_versions("name='sine-forecaster'")
    assert [v.run_id for v in versions] == [best.run_id]
    assert tags["best.model_version"] == str(versions[0].version)
    assert client.get_run(best.run_id).info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert "test/mse" in parent.data.metrics

    local = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "parent")))
    for name in ("plots/optimization_history.png", "plots/param_importances.png", "sweep/trials.csv"):
        assert (local / name).stat().st_size > 0, name
    trials_csv = (local / "sweep" / "trials.csv").read_text()
    assert trials_csv.count("\n") == 4 and "PRUNED" in trials_csv


@pytest.mark.parametrize(("params", "expected"), [
    ({"model.hiden_size": {"int": [4, 8]}}, "model.hiden_size: not a config key; did you mean model.hidden_size?"),
    ({"model.hidden_size": {"int": [8, 8]}}, "empty range"),
    ({"model.hidden_size": {"int": [16, 8]}}, "empty range"),
    ({"model.hidden_size": {"int": [0, 8]}}, "model.hidden_size=0: must be >= 1"),
    ({"model.dropout": {"float": [0.0, 1.0]}}, "model.dropout=1.0: must be in [0, 1)"),
    ({"optim.lr": {"float": [0.0, 0.1], "log": True}}, "log: true needs low > 0"),
    ({"model.name": {"categorical": []}}, "non-empty list"),
    ({"data.lookback": {"int": [2, 30]}}, "data.burn_in"),  # the sine config's burn_in is 4
    ({"tracking.uri": {"categorical": ["sqlite:///x.db"]}}, "cannot vary tracking.uri"),
])
def test_a_bad_space_is_one_line_and_writes_nothing(store, tmp_path, capsys, params, expected):
    err = refusal(capsys, [f"hparams_search={write_space(tmp_path / 'space.yaml', params=params)}"])
    assert expected in err and "space.yaml: params." in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / JOURNAL_FILE).exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["hparams_search=nope"], "no such search space"),
    (["hparams_search.n_trialz=3"], "n_trialz"),
    (["hparams_search.direction=maximize"], "use direction: minimize"),
    (["hparams_search.objective=test/mse"], "must be a validation metric"),
    (["hparams_search.storage=redis://me:hunter22@host/0"], "not a journal file or an SQLAlchemy"),
    (["hparams_search.storage=postgresql+psycopg2://me:hunter22@127.0.0.1:1/optuna"], "cannot open the study database"),
    (["hparams_search.storage=/no/such/dir/journal.log"], "does not exist"),
    (["-m"], "drop -m"),
])
def test_bad_settings_are_one_line_and_write_nothing(store, tmp_path, capsys, args, expected):
    err = refusal(capsys, [f"hparams_search={write_space(tmp_path / 'space.yaml')}", *args])
    assert expected in err and "hunter22" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / JOURNAL_FILE).exists()


def test_a_restart_continues_the_study_and_another_space_under_its_name_is_refused(store, tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", n_trials=1, params={"model.hidden_size": {"int": [4, 8]}})
    first = run_sweep(space)
    again = run_sweep(space, ["n_trials=2"])  # a bigger budget: one more trial, same parent
    assert again.parent_run_id == first.parent_run_id
    assert [o.number for o in again.outcomes] == [1]
    study = optuna.load_study(study_name="space", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / JOURNAL_FILE))))
    assert len(study.trials) == 2
    assert run_sweep(space, ["n_trials=2"]).outcomes == []  # the budget is spent: nothing runs
    before = runs(store)
    assert len([r for r in before if r.data.tags.get("sweep.role") == "parent"]) == 1

    other = write_space(tmp_path / "other.yaml", study_name="space", params={"model.hidden_size": {"int": [4, 9]}})
    assert "already exists with another search space" in refusal(capsys, [f"hparams_search={other}"])
    flipped = write_space(tmp_path / "flipped.yaml", study_name="space", objective="val/mse",
                          params={"model.hidden_size": {"int": [4, 8]}})
    assert "already exists with another search space" in refusal(capsys, [f"hparams_search={flipped}"])
    assert len(runs(store)) == len(before)
    assert len(study.trials) == 2


def test_the_shipped_search_spaces_pass_their_checks():
    from pipeline.sweep.space import load_search_space, search_options

    assert {"sine", "stock_close", "sst_seq2seq"} <= set(search_options())
    for name in search_options():
        space, base = load_search_space(name)  # every bound composed and checked by the schema
        assert space.config.objective.startswith("val/") and space.params
        assert base.data.name == {"stock_close": "stock", "sst_seq2seq": "sst_synthetic",
                                  "universe_synthetic": "universe_synthetic"}.get(name, "sine")

