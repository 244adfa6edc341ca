"""Experiment configs compose, the quick runner trains them, and the report is built from MLflow."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import CONF_DIR, group_options, load_config
from pipeline.experiments import main as run_experiments
from pipeline.experiments import plan
from pipeline.report import main as build_report
from tests.conftest import compose_config

STUDIES = ["binary_addition", "sine_cosine", "sst_seq2seq", "stock_close", "toy_regression"]


def test_every_study_has_a_config_and_compares_the_variants() -> None:
    assert group_options(CONF_DIR, "experiment") == STUDIES
    for study in STUDIES:
        cfg = compose_config(f"experiment={study}")
        assert cfg.study == study
        labels = set(cfg.runner.variants)
        assert {"lstm", "gru", "peephole", "coupled"} <= labels, study


def test_published_settings_are_kept() -> None:
    sine = compose_config("experiment=sine_cosine")
    assert (sine.model.name, sine.model.hidden_size, sine.data.split.test) == ("lstm", 16, 0.5)
    stock = compose_config("experiment=stock_close")
    assert (stock.model.num_layers, stock.model.hidden_size, stock.data.lookback) == (2, 8, 10)
    assert stock.data.split.train == 0.7 and stock.data.params["start"] == "2019-01-01"
    binary = compose_config("experiment=binary_addition")
    assert binary.model.hidden_size == 16 and binary.data.params["bits"] == 8
    assert binary.promotion.metric == "log_loss"  # a classification study ranks on a classification metric
    sst = compose_config("experiment=sst_seq2seq")
    assert sst.model.name == "seq2seq" and sst.model.recurrent_l2 > 0 and sst.data.horizon > 1
    assert "rnn" in compose_config("experiment=binary_addition").runner.variants


def test_every_study_declares_its_bar_as_data() -> None:
    bars = {study: compose_config(f"experiment={study}").runner.expect for study in STUDIES}
    coverage = ("test/coverage_80", 0.75, 0.85)  # the 80% interval within 80% +- 5 points
    assert [(e.metric, e.min, e.max, e.variants) for e in bars["sine_cosine"]] == [
        ("test/mse", None, 1e-3, ["lstm"]), (*coverage, ["lstm-quantile"])]
    assert [(e.metric, e.min) for e in bars["binary_addition"]] == [("test/exact_match", 1.0)]
    assert [(e.metric, e.min, e.max, e.variants) for e in bars["sst_seq2seq"]] == [
        ("test/mase_seasonal_naive", None, 1.0, None), (*coverage, ["gru-quantile"])]
    assert not bars["sst_seq2seq"][1].met_by(0.64) and bars["sst_seq2seq"][1].met_by(0.79)
    sine_bar = bars["sine_cosine"][0]
    assert sine_bar.met_by(2.9e-4) and not sine_bar.met_by(7.3e-3) and not sine_bar.met_by(None)


def test_quick_plan_shortens_training_and_uses_its_own_store() -> None:
    cfg = load_config("experiments", ["experiments.mode=quick", "experiments.studies=[sine_cosine]",
                                      "experiments.variants=[gru]"])
    runs = plan(cfg, ["experiments.mode=quick", "experiments.studies=[sine_cosine]"])
    assert runs == [("sine_cosine", "gru", [
        "experiment=sine_cosine", "model=gru", "trainer.max_epochs=2", "data.params.points=400",
        "data.lookback=20", "tracking.uri=sqlite:///.reports/quick/mlflow.db",
        "tracking.artifact_root=.reports/quick/mlartifacts", "trainer.progress_bar=false",
        "trainer.model_summary=false"])]


@pytest.mark.slow
def test_quick_runs_then_report_from_the_store(store, tmp_path, capsys) -> None:
    run_experiments(["experiments.mode=quick", "experiments.studies=[toy_regression,stock_close]",
                     "experiments.variants=[lstm,gru]", f"tracking.uri={store}"])
    printed = capsys.readouterr().out
    # offline, with no cache: the stock study is skipped with its reason, the rest goes on
    assert "stock_close      lstm       skipped" in printed and "TUSHARE_TOKEN" in printed
    assert "toy_regression   lstm       done" in printed
    stale = tmp_path / "reports" / "plots" / "toy_regression" / "seq2seq-old_forecast.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"a plot of a variant the report no longer has")
    build_report(["report.mode=quick", f"tracking.uri={store}", f"report.output={tmp_path / 'reports'}"])
    assert not stale.exists()
    report = (tmp_path / "reports" / "studies.md").read_text()
    assert report.startswith("# Studies (quick mode")
    assert "## toy_regression" in report and "## stock_close" not in report
    table = [line for line in report.splitlines() if line.startswith("| lstm") or line.startswith("| gru")]
    assert len(table) == 2
    client = MlflowClient(store)
    runs = {r.data.tags["variant"]: r for r in client.search_runs(
        [client.get_experiment_by_name("toy").experiment_id])}
    # numbers in the report are the store's numbers
    assert f"{runs['lstm'].data.metrics['test/mse']:.4g}" in table[[line.startswith('| gru') for line in table].index(False)]
    assert "truth → prediction: 7 →" in report and "9 →" in report
    assert (tmp_path / "reports" / "plots" / "toy_regression" / "lstm_forecast.png").exists()
    summary = client.get_experiment_by_name("studies-report")
    run = client.search_runs([summary.experiment_id])[0]
    assert any(a.path == "report/studies.md" for a in client.list_artifacts(run.info.run_id, "report"))


@pytest.mark.slow
def test_a_missed_bar_fails_the_command_after_the_rest_ran(store, tmp_path, capsys) -> None:
    """Full mode checks each study's declared bar: one epoch of the toy study cannot reach it, so
    the run fails and the command exits 1, after running every planned run."""
    with pytest.raises(SystemExit) as stopped:
        run_experiments(["experiments.studies=[toy_regression]", "experiments.variants=[lstm,gru]",
                         "trainer.max_epochs=1", f"tracking.uri={store}"])
    assert stopped.value.code == 1
    printed = capsys.readouterr()
    assert "toy_regression   lstm       failed" in printed.out and "test/mae <= 0.1" in printed.out
    assert "toy_regression   gru" in printed.out
    assert "2 of 2 runs failed" in printed.err


def test_only_unavailable_data_is_a_skip(store, tmp_path) -> None:
    """The stock study offline with no cache is a skip; the same study on a user's file that is
    too short for its split is a failure (real data, real errors: no training starts)."""
    from pipeline.experiments import run_one

    offline = ["experiment=stock_close", "model=lstm", f"data.cache_dir={tmp_path / 'cache'}",
               "data.offline=true"]
    assert run_one("stock_close", "lstm", offline, "full").status == "skipped"
    short = tmp_path / "closes.csv"
    short.write_text("date,close\n" + "\n".join(f"2024-01-{d:02d},{3000 + d}" for d in range(1, 16)))
    on_file = ["experiment=stock_close", "model=lstm", "data=csv", f"data.params.path={short}"]
    outcome = run_one("stock_close", "lstm", on_file, "full")
    assert outcome.status == "failed" and "closes.csv" in outcome.detail and "split" in outcome.detail


def test_the_report_keeps_a_studys_point_and_quantile_runs_of_one_cell_apart(store) -> None:
    # Both are seq2seq-gru to the model (its variant tag); the study names them gru and
    # gru-quantile, and so does the report, whose bars name them so too.
    from pipeline.report import latest_runs_by_study

    client = MlflowClient(store)
    experiment = client.create_experiment("sst_synthetic")
    for name in ("gru", "gru-quantile"):
        run = client.create_run(experiment, tags={"study": "sst_seq2seq", "variant": "seq2seq-gru",
                                                  "study_variant": name})
        client.set_terminated(run.info.run_id, "FINISHED")
    older = client.create_run(experiment, tags={"study": "sst_seq2seq", "variant": "seq2seq-lstm"})
    client.set_terminated(older.info.run_id, "FINISHED")  # a run from before the study tag
    assert sorted(latest_runs_by_study(client)["sst_seq2seq"]) == ["gru", "gru-quantile", "seq2seq-lstm"]
