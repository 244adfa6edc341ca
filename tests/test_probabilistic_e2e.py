"""A quantile head through the whole chain, as `make train ARGS="experiment=stock_close data=csv
data.params.path=<closes> model.head=quantile"` runs it: interval metrics beside persistence's,
the band in the forecast plot, the calibration plot, and the champion ranked by CRPS."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.training import train
from tests.conftest import compose_config


def _closes(path, days: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    closes = 3000.0 * np.exp(np.cumsum(0.01 * rng.standard_normal(days)))
    dates = pd.bdate_range("2021-01-04", periods=days).strftime("%Y-%m-%d")
    pd.DataFrame({"date": dates, "close": closes}).to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_a_quantile_head_on_closes_logs_intervals_beside_persistence_and_ranks_by_crps(store, tmp_path) -> None:
    path = _closes(tmp_path / "closes.csv")
    args = ["experiment=stock_close", "data=csv", f"data.params.path={path}", "model.head=quantile",
            "trainer.max_epochs=3", "trainer.progress_bar=false", "trainer.model_summary=false",
            "promotion.metric=crps"]
    first = train(compose_config(*args))
    metrics = first.test_metrics
    for key in ("coverage_80", "width_80", "crps", "coverage_error", "pinball_q0.1", "pinball_q0.9",
                "persistence_crps", "persistence_coverage_80", "conformal_coverage_80"):
        assert np.isfinite(metrics[f"test/{key}"]), key
    assert 0 <= metrics["test/coverage_80"] <= 1
    assert metrics["test/width_80"] > 0
    # CRPS at three levels is 2 x the mean pinball loss over them
    pinball = np.mean([metrics[f"test/pinball_q{q}"] for q in ("0.1", "0.5", "0.9")])
    assert metrics["test/crps"] == pytest.approx(2 * pinball, rel=1e-6)
    assert metrics["test/relative_crps"] == pytest.approx(
        metrics["test/crps"] / metrics["test/persistence_crps"], rel=1e-6)

    client = MlflowClient(store)
    plots = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"plots/forecast.png", "plots/calibration.png", "plots/loss_curve.png"} <= plots
    preds = pd.read_csv(client.download_artifacts(first.run_id, "predictions/test_predictions.csv",
                                                  str(tmp_path)))
    assert (preds["y_q0.1"] <= preds["y_q0.5"]).all() and (preds["y_q0.5"] <= preds["y_q0.9"]).all()
    np.testing.assert_allclose(preds["y_pred"], preds["y_q0.5"], rtol=1e-6)  # the point is the median

    assert first.promotion.promoted  # the first version becomes champion
    second = train(compose_config(*args, "seed=1"))
    decision = second.promotion
    assert decision.metric == "crps"
    # the two versions were ranked by their CRPS on the challenger's test windows
    assert decision.candidate_score is not None and decision.champion_score is not None
    better = decision.candidate_score < decision.champion_score
    assert decision.promoted == better
