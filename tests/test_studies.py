"""Experiment configs compose, the quick runner trains them, and the report is built from MLflow."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import CONF_DIR, group_options
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
    assert stock.data.split.train == 0.7 and stock.data.params.start == "2019-01-01"
    binary = compose_config("experiment=binary_addition")
    assert binary.model.hidden_size == 16 and binary.data.params.bits == 8
    sst = compose_config("experiment=sst_seq2seq")
    assert sst.model.name == "seq2seq" and sst.model.recurrent_l2 > 0 and sst.data.horizon > 1
    assert "rnn" in compose_config("experiment=binary_addition").runner.variants


def test_quick_plan_shortens_training() -> None:
    runs = plan("quick", ["sine_cosine"], ["gru"])
    assert runs == [("sine_cosine", "gru", ["model=gru", "trainer.max_epochs=2", "data.params.points=400",
                                            "data.lookback=20", "trainer.progress_bar=false",
                                            "trainer.model_summary=false"])]


@pytest.mark.slow
def test_quick_runs_then_report_from_the_store(store, tmp_path, capsys) -> None:
    assert run_experiments(["--mode", "quick", "--studies", "toy_regression,stock_close",
                            "--variants", "lstm,gru"]) == 0
    printed = capsys.readouterr().out
    # offline, with no cache: the stock study is skipped with its reason, the rest goes on
    assert "stock_close      lstm       skipped" in printed and "TUSHARE_TOKEN" in printed
    build_report(["--out", str(tmp_path / "reports")])
    report = (tmp_path / "reports" / "studies.md").read_text()
    assert "## toy_regression" in report and "## stock_close" not in report
    table = [line for line in report.splitlines() if line.startswith("| lstm") or line.startswith("| gru")]
    assert len(table) == 2
    client = MlflowClient(store)
    runs = {r.data.tags["variant"]: r for r in client.search_runs(
        [client.get_experiment_by_name("toy").experiment_id])}
    # numbers in the report are the store's numbers
    assert f"{runs['lstm'].data.metrics['test/mse']:.4g}" in table[[line.startswith('| gru') for line in table].index(False)]
    assert "true sum → prediction: 7 →" in report and "9 →" in report
    assert (tmp_path / "reports" / "plots" / "toy_regression" / "lstm_forecast.png").exists()
    summary = client.get_experiment_by_name("studies-report")
    run = client.search_runs([summary.experiment_id])[0]
    assert any(a.path == "report/studies.md" for a in client.list_artifacts(run.info.run_id, "report"))
