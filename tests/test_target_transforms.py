"""Price targets as changes (data.target_transform=log_return|diff): the model learns changes,
everything users read is in prices."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from pipeline.data.datamodule import build_datamodule
from pipeline.data.transforms import changes, to_levels
from pipeline.errors import ConfigError, DataError
from pipeline.evaluate import raw_targets
from pipeline.tracking.pyfunc import load_registered_model
from pipeline.tracking.store import open_store
from pipeline.training import train
from tests.conftest import compose_config
from tests.test_probabilistic_e2e import _closes


def test_changes_of_prices_by_hand() -> None:
    prices = np.array([[100.0], [110.0], [99.0]])
    np.testing.assert_allclose(changes(prices, "log_return")[1:, 0], [math.log(1.1), math.log(0.9)])
    np.testing.assert_allclose(changes(prices, "diff")[1:, 0], [10.0, -11.0])
    assert np.isnan(changes(prices, "diff")[0, 0])  # the first row has no previous one
    np.testing.assert_array_equal(changes(prices, "none"), prices)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(1.0, 1e4), min_size=4, max_size=12), st.sampled_from(["log_return", "diff"]))
def test_levels_from_the_last_price_and_the_changes_give_back_the_prices(prices, kind) -> None:
    levels = np.array(prices)[:, None]
    steps = changes(levels, kind)[1:]  # the changes after the first price
    back = to_levels(torch.tensor(steps[None]), torch.tensor(levels[:1]), kind)
    np.testing.assert_allclose(back[0].numpy(), levels[1:], rtol=1e-9)


def _stock_args(path, *extra: str) -> list[str]:
    return ["experiment=stock_close", "data=csv", f"data.params.path={path}",
            "data.inputs=[close]", "data.targets=[close]", *extra]


def test_windows_hold_scaled_changes_fit_on_the_training_rows_and_the_truth_stays_prices(tmp_path) -> None:
    path = _closes(tmp_path / "closes.csv", days=300)
    dm = build_datamodule(compose_config(*_stock_args(path, "data.target_transform=log_return")).data)
    prepared = dm.prepared
    closes = prepared.frame["close"].to_numpy()
    returns = np.diff(np.log(closes))  # returns[i] is the change into row i + 1
    train_start, train_stop = prepared.bounds["train"]
    # data=csv scales to mean 0, sd 1: the mean of the returns into rows 1..train_stop - 1
    assert prepared.y_scaler.center[0] == pytest.approx(returns[train_start:train_stop - 1].mean())
    train = prepared.windows["train"]
    raw = prepared.y_scaler.inverse(train.y.reshape(-1, 1)).reshape(train.y.shape)
    np.testing.assert_allclose(raw[:, :, 0], returns[train.rows - 1], rtol=1e-9)
    np.testing.assert_array_equal(raw_targets(prepared, train)[:, :, 0], closes[train.rows])


@pytest.mark.parametrize(("overrides", "names"), [
    (["data.target_transform=log_return", "data.inputs=[open]"], "data.inputs"),
    (["data.target_transform=diff", "model=seq2seq"], "model.name"),
    (["data.target_transform=diff", "model.head=gaussian"], "model.head"),
    (["data.target_transform=diff", "model.head=quantile", "data.horizon=2"], "model.head"),
    (["data.target_transform=returns"], "data.target_transform"),
])
def test_unsupported_combinations_are_one_line(tmp_path, overrides, names) -> None:
    path = _closes(tmp_path / "closes.csv", days=100)
    args = ["experiment=stock_close", "data=csv", f"data.params.path={path}", "data.targets=[close]",
            "data.inputs=[close]", *overrides]
    with pytest.raises(ConfigError) as error:
        compose_config(*args)
    message = str(error.value)
    assert message.startswith(names) and "\n" not in message


def test_a_log_return_of_a_non_positive_price_is_one_line(tmp_path) -> None:
    path = tmp_path / "closes.csv"
    dates = pd.bdate_range("2021-01-04", periods=120).strftime("%Y-%m-%d")
    values = np.linspace(5.0, -1.0, 120)  # crosses zero
    pd.DataFrame({"date": dates, "close": values}).to_csv(path, index=False)
    cfg = compose_config(*_stock_args(path, "data.target_transform=log_return", "data.positive=false"))
    with pytest.raises(DataError, match="needs prices > 0; column 'close'") as error:
        build_datamodule(cfg.data)
    assert "\n" not in str(error.value) and "data.target_transform=diff" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["log_return", "diff"])
def test_a_model_of_returns_is_scored_and_served_in_prices(store, tmp_path, kind) -> None:
    path = _closes(tmp_path / "closes.csv", days=400)
    cfg = compose_config(*_stock_args(path, f"data.target_transform={kind}", "trainer.max_epochs=2",
                                      "trainer.progress_bar=false", "trainer.model_summary=false"))
    result = train(cfg)
    metrics = result.test_metrics
    for key in ("test/mse", "test/mase", "test/directional_accuracy", "test/persistence_mae"):
        assert np.isfinite(metrics[key]), key
    # a return model cannot be far from yesterday's close: a MASE near 1, not a price-sized error
    assert metrics["test/mase"] < 3

    client = MlflowClient(store)
    preds = pd.read_csv(client.download_artifacts(result.run_id, "predictions/test_predictions.csv",
                                                  str(tmp_path)))
    closes = pd.read_csv(path)["close"].to_numpy()
    np.testing.assert_allclose(preds["y_true"], closes[preds["row"]])  # the truth is the price

    model = load_registered_model(open_store(store), result.model_name, result.model_version)
    recent = pd.read_csv(path).iloc[-cfg.data.lookback:]
    forecast = model.predict(recent)
    last = recent["close"].iloc[-1]
    assert abs(forecast["close"].iloc[0] / last - 1) < 0.2  # a price next to the last one
