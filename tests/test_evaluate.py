import math

import lightning as L
import numpy as np
import pandas as pd
import pytest

from pipeline.cli import load_config
from pipeline.data.datamodule import build_datamodule
from pipeline.errors import ConfigError
from pipeline.evaluate import (
    METRICS,
    baseline_predictions,
    directional_scores,
    metrics_with_baselines,
    predict_windows,
    score,
)
from pipeline.models.metrics import LOGGED_PER_EPOCH
from pipeline.training import build_module


def _preds(rows: list[int], steps: list[int], y_pred: list[float], frame: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"split": "test", "window": 0, "step": steps, "target": "y", "row": rows,
                         "y_true": frame["y"].to_numpy()[rows], "y_pred": y_pred})


FRAME = pd.DataFrame({"y": np.arange(100, 130, dtype=float)})


def test_persistence_is_the_last_observed_value_for_every_horizon_step() -> None:
    # window inputs end at row 19; targets are rows 20, 21, 22 (horizon steps 1..3)
    preds = _preds([20, 21, 22], [0, 1, 2], [0, 0, 0], FRAME)
    base = baseline_predictions(preds, FRAME, "forecast")["persistence"]
    np.testing.assert_array_equal(base, [119.0, 119.0, 119.0])


def test_seasonal_naive_uses_the_same_season_of_the_last_observed_cycle() -> None:
    preds = _preds([20, 21, 22, 24], [0, 1, 2, 4], [0, 0, 0, 0], FRAME)
    base = baseline_predictions(preds, FRAME, "forecast", season=4)["seasonal_naive"]
    # rows 20,21,22 come from one season back (16,17,18); row 24 (step 5) from two seasons back
    np.testing.assert_array_equal(base, [116.0, 117.0, 118.0, 116.0])


def test_no_baseline_where_the_target_is_never_observed() -> None:
    assert baseline_predictions(_preds([5], [0], [0], FRAME), FRAME, "sequence") == {}


def test_mase_compares_with_persistence_on_the_same_targets() -> None:
    # y rises by 1 each row, so persistence is off by exactly 1 at step 1
    preds = _preds([20, 21], [0, 0], [120.5, 121.5], FRAME)
    metrics = metrics_with_baselines(preds, FRAME, "forecast")
    assert metrics["test/persistence_mae"] == pytest.approx(1.0)
    assert metrics["test/mase"] == pytest.approx(0.5)  # model MAE 0.5 / persistence MAE 1
    assert metrics["test/mape"] == pytest.approx(np.mean([0.5 / 120, 0.5 / 121]))


def test_directional_accuracy_counts_the_signs_of_the_moves_from_the_last_close() -> None:
    # last closes 10, 10, 10, 10, 10; truths up, down, up, unchanged, down; forecasts up, up,
    # up, down, flat: right, wrong, right, (no move: not counted), wrong (flat has no sign).
    last = np.full(5, 10.0)
    truth = np.array([11.0, 9.0, 10.5, 10.0, 9.5])
    pred = np.array([10.2, 10.1, 12.0, 9.0, 10.0])
    scores = directional_scores(truth, pred, last)
    assert scores == {"test/directional_accuracy": pytest.approx(2 / 4), "test/up_share": pytest.approx(2 / 4)}
    assert np.isnan(directional_scores(last, pred, last)["test/directional_accuracy"])


def test_directional_accuracy_sits_beside_mase_for_forecasts() -> None:
    # FRAME rises by 1 a row: every move is up; a forecast below the last value is wrong
    preds = _preds([20, 21], [0, 0], [120.5, 118.0], FRAME)
    metrics = metrics_with_baselines(preds, FRAME, "forecast")
    assert metrics["test/directional_accuracy"] == pytest.approx(0.5)
    assert metrics["test/up_share"] == pytest.approx(1.0)


def test_regression_test_metrics_have_one_owner_each() -> None:
    """metrics_with_baselines gives what ForecastModule's torchmetrics do not log."""
    preds = _preds([20, 21, 24], [0, 1, 4], [120.5, 121.5, 123.0], FRAME)
    metrics = metrics_with_baselines(preds, FRAME, "forecast", season=4)
    module_keys = {f"test/{m}" for m in LOGGED_PER_EPOCH["regression"]}
    assert not module_keys & set(metrics)
    assert {k.removeprefix("test/") for k in metrics if "_" not in k} | set(
        LOGGED_PER_EPOCH["regression"]) == set(METRICS["regression"]) | {"mase"}  # mase: only with a baseline
    assert {"test/seasonal_naive_mae", "test/mase_seasonal_naive"} <= set(metrics)


def test_a_classification_task_gets_no_regression_metrics() -> None:
    frame = pd.DataFrame({"y": np.tile([0.0, 1.0], 15)})
    preds = _preds([20, 21], [0, 1], [0.9, 0.8], frame)
    # the module logs the classification metrics; there is no label baseline to add
    assert metrics_with_baselines(preds, frame, "forecast", task="classification") == {}


def test_mape_only_for_strictly_positive_targets() -> None:
    assert "mape" not in score(np.array([1.0, -1.0]), np.array([1.0, -1.0]))
    assert score(np.array([2.0, 4.0]), np.array([1.0, 4.0]))["mape"] == pytest.approx(0.25)


def test_regression_scores_against_hand_computed_values() -> None:
    scores = score(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[2.0, 2.0], [3.0, 1.0]]))
    assert scores == pytest.approx({"mse": 10 / 4, "mae": 4 / 4, "rmse": math.sqrt(10 / 4),
                                    "mape": (1 / 1 + 3 / 4) / 4})


def test_classification_scores_per_sample_and_per_label() -> None:
    # (samples=2, steps=2, targets=1); predicted labels [[1, 0], [1, 0]] against [[1, 0], [0, 0]]
    probs = np.array([[0.9, 0.2], [0.6, 0.4]])[..., None]
    labels = np.array([[1, 0], [0, 0]])[..., None]
    scores = score(labels, probs, task="classification")
    assert scores == pytest.approx({
        "accuracy": 3 / 4, "exact_match": 1 / 2,
        "log_loss": -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4})
    assert set(scores) == set(METRICS["classification"]) == set(LOGGED_PER_EPOCH["classification"])


def test_one_label_per_sample_exact_match_is_accuracy() -> None:
    scores = score(np.array([1, 1, 0, 0]), np.array([0.7, 0.2, 0.1, 0.3]), task="classification")
    assert scores["exact_match"] == scores["accuracy"] == pytest.approx(3 / 4)


def test_empty_split_scores_are_nan_not_an_error() -> None:
    empty = np.empty((0, 3, 1))
    assert all(math.isnan(v) for v in score(empty, empty, task="classification").values())
    assert math.isnan(score(empty, empty)["mse"])


def test_unknown_task_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="data.task='ranking': unknown task; choose one of "
                                          "regression, classification"):
        score(np.zeros(2), np.zeros(2), task="ranking")


def test_every_metric_has_a_direction() -> None:
    assert {d for metrics in METRICS.values() for d in metrics.values()} == {"minimize", "maximize"}
    assert METRICS["classification"]["accuracy"] == "maximize"
    assert METRICS["regression"]["mse"] == "minimize" and "mase" not in METRICS["regression"]


@pytest.mark.parametrize("overrides", [
    ["data=sine", "data.params.points=300", "data.lookback=16"],  # regression, burn-in 4
    ["data=binary_add"],  # classification, 8 labels per sample
], ids=["regression", "classification"])
def test_the_module_and_score_agree_on_the_test_windows(overrides) -> None:
    """Both owners of the task's test metrics use one formula: the torchmetrics the Trainer
    logs and evaluate.score over the same windows (an untrained network is enough)."""
    cfg = load_config("train", [*overrides, "model=gru", "model.hidden_size=8"])
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg.data)
    module = build_module(cfg, dm.prepared)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    logged = trainer.test(module, datamodule=dm, verbose=False)[0]
    test, start = dm.prepared.windows["test"], module.hparams.loss_from_step
    truth = test.y if cfg.data.task == "classification" else (
        dm.prepared.y_scaler.inverse(test.y.reshape(-1, test.y.shape[-1])).reshape(test.y.shape))
    scores = score(truth[:, start:], predict_windows(module.net, test.x)[:, start:], cfg.data.task)
    assert set(LOGGED_PER_EPOCH[cfg.data.task]) <= set(scores)
    for name in LOGGED_PER_EPOCH[cfg.data.task]:
        assert logged[f"test/{name}"] == pytest.approx(scores[name], rel=1e-5)
