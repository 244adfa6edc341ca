import numpy as np
import pandas as pd
import pytest

from pipeline.evaluate import baseline_predictions, metrics_with_baselines, score


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
    assert metrics["test/mae"] == pytest.approx(0.5)
    assert metrics["test/persistence_mae"] == pytest.approx(1.0)
    assert metrics["test/mase"] == pytest.approx(0.5)
    assert metrics["test/mape"] == pytest.approx(np.mean([0.5 / 120, 0.5 / 121]))


def test_mape_only_for_strictly_positive_targets() -> None:
    assert "mape" not in score(np.array([1.0, -1.0]), np.array([1.0, -1.0]))
    assert score(np.array([2.0, 4.0]), np.array([1.0, 4.0]))["mape"] == pytest.approx(0.25)
