"""One global model over many series (data.layout=universe): batches with series ids, a network
that scales each window by its series, per-series evaluation, and a pyfunc that takes a
`series` column — through a real Trainer and a real sqlite store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.data.datamodule import UniverseBatches, build_datamodule
from pipeline.data.universe import prepare_universe, synthetic_universe
from pipeline.data.windowing import WindowSpec
from pipeline.errors import ConfigError
from pipeline.evaluate_universe import per_series_metrics, universe_metrics
from pipeline.models.network import Forecaster, NetworkSpec
from pipeline.tracking.champion import load_test_windows, score_on_windows
from pipeline.tracking.pyfunc import RequestError, forecast_frame, load_registered_model
from pipeline.tracking.store import open_store
from pipeline.training import train
from tests.conftest import compose_config

SMALL = ["data=universe_synthetic", "data.params.n_series=12", "data.params.days=260",
         "data.lookback=10", "data.min_windows=5", "data.batch_size=64", "model.hidden_size=8",
         "model.series_embedding_dim=3", "trainer.max_epochs=2", "trainer.progress_bar=false",
         "trainer.model_summary=false"]


def universe_net(n_series: int = 3, encoding: str = "embedding", transform: str = "none") -> Forecaster:
    rng = np.random.default_rng(0)
    spec = NetworkSpec(variant="lstm", inputs=["close"], targets=["close"], lookback=4, horizon=2,
                       hidden_size=5, series=[f"S{i}" for i in range(n_series)],
                       series_encoding=encoding, series_embedding_dim=3,
                       x_scaler={"center": rng.uniform(10, 100, (n_series, 1)).tolist(),
                                 "scale": rng.uniform(1, 5, (n_series, 1)).tolist()},
                       y_scaler={"center": rng.uniform(10, 100, (n_series, 1)).tolist(),
                                 "scale": rng.uniform(1, 5, (n_series, 1)).tolist()},
                       target_transform=transform)
    torch.manual_seed(0)
    return Forecaster(spec).eval()


# --- the network ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["embedding", "onehot", "none"])
def test_each_window_is_scaled_and_unscaled_by_its_own_series(encoding: str) -> None:
    net = universe_net(encoding=encoding)
    x_raw = torch.rand(3, 4, 1) * 50 + 20
    series = torch.tensor([2, 0, 1])
    xc, xs = net.x_center[series][:, None], net.x_scale[series][:, None]
    x = (x_raw - xc) / xs
    expected = net(x, series=series) * net.y_scale[series][:, None] + net.y_center[series][:, None]
    torch.testing.assert_close(net.predict_raw(x_raw, series), expected)
    widths = {"embedding": 1 + 3, "onehot": 1 + 3, "none": 1}
    assert net.backbone.input_size == widths[encoding]


def test_the_series_encoding_changes_the_forecast_of_the_same_window() -> None:
    net = universe_net(encoding="onehot")
    x = torch.rand(1, 4, 1).expand(2, -1, -1)
    out = net(x, series=torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])  # same scaled inputs, another series


def test_a_universe_net_refuses_windows_without_series_and_names_unknown_codes() -> None:
    net = universe_net()
    with pytest.raises(ValueError, match="series ids"):
        net.predict_raw(torch.rand(1, 4, 1))
    assert net.series_ids(["S2", "S0"]).tolist() == [2, 0]
    with pytest.raises(KeyError, match="S9"):
        net.series_ids(["S1", "S9"])


def test_log_return_forecasts_are_levels_from_each_series_last_price() -> None:
    net = universe_net(transform="log_return")
    x_raw = torch.tensor([[[10.0], [11.0], [12.0], [13.0]], [[50.0], [51.0], [52.0], [53.0]]])
    series = torch.tensor([0, 2])
    x = net.scale_x(x_raw, series)
    returns = net(x, series=series) * net.y_scale[series][:, None] + net.y_center[series][:, None]
    last = x_raw[:, -1, :]  # (2, 1)
    expected = last[:, None, :] * torch.exp(torch.cumsum(returns, dim=1))
    torch.testing.assert_close(net.predict_raw(x_raw, series), expected)


# --- batches --------------------------------------------------------------------------------------


def test_universe_batches_equal_the_window_index_gathers() -> None:
    frame = synthetic_universe(n_series=6, days=120, seed=3)
    universe = prepare_universe(frame, ["close"], ["close"], WindowSpec(lookback=5, horizon=2),
                                {"train": 0.6, "val": 0.2, "test": 0.2})
    windows = universe.windows["train"]
    dataset = UniverseBatches(windows)
    picked = [0, 7, len(windows) - 1, 3]
    x, y, series = dataset.__getitems__(picked)
    ex, ey, es = windows.batch(np.array(picked))
    np.testing.assert_array_equal(x.numpy(), ex)
    np.testing.assert_array_equal(y.numpy(), ey)
    np.testing.assert_array_equal(series.numpy(), es)
    # Views of the split's rows, not copies: the dataset holds no window of its own.
    assert dataset.x_values.data_ptr() == torch.from_numpy(windows.x_values).data_ptr()


def test_the_datamodule_serves_series_ids_and_drops_short_series() -> None:
    dm = build_datamodule(compose_config(*SMALL).data)
    x, y, series = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 10, 1) and y.shape == (64, 1, 1) and series.dtype == torch.long
    universe = dm.prepared
    assert 0 < len(universe.series) <= 12 and len(universe.series) + len(universe.dropped) == 12
    assert universe.digest and universe.source == "universe_synthetic"


# --- evaluation -----------------------------------------------------------------------------------


def test_per_series_metrics_and_aggregates_by_hand() -> None:
    # Series A: model errors 0.5, 2.5 vs persistence 2, 2 -> MASE 0.75; B: 3, 3 vs 1, 1 -> 3.
    preds = pd.DataFrame({
        "series": ["B", "A", "B", "A"],
        "y_true": [20.0, 10.0, 18.0, 12.0],
        "y_pred": [23.0, 10.5, 15.0, 9.5],
        "persistence": [19.0, 8.0, 19.0, 10.0],
    })
    table = per_series_metrics(preds)
    assert table["series"].tolist() == ["A", "B"]  # best MASE first
    np.testing.assert_allclose(table["mase"], [0.75, 3.0])
    np.testing.assert_allclose(table["mae"], [1.5, 3.0])
    # A went up twice; its forecasts say up (10.5 > 8), then down (9.5 < 10): one of two right.
    # B went up then down, and so did its forecasts.
    np.testing.assert_allclose(table["directional_accuracy"], [0.5, 1.0])
    metrics = universe_metrics(preds, table)
    assert metrics["test/mase_mean"] == pytest.approx(1.875)
    assert metrics["test/mase_median"] == pytest.approx(1.875)
    assert metrics["test/share_beating_persistence"] == pytest.approx(0.5)
    assert metrics["test/series"] == 2
    assert metrics["test/mase"] == pytest.approx(2.25 / 1.5)  # pooled MAEs over all four
    assert metrics["test/directional_accuracy"] == pytest.approx(0.75)


# --- configs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "match"), [
    (["data=universe_synthetic", "data.layout=series"], "must be universe"),
    (["data=sine", "data.layout=universe"], "many series"),
    (["data=universe_synthetic", "model.series_encoding=hash"], "series_encoding"),
    (["data=universe_file"], "data.params.path is not set"),
    (["data=universe_stock", "data.params.codes=[]"], "name the codes"),
])
def test_universe_configs_are_checked(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        compose_config(*overrides)


# --- end to end: a real Trainer, store and pyfunc --------------------------------------------------


def test_a_universe_trains_logs_per_series_metrics_and_serves_two_series(store: str) -> None:
    result = train(compose_config(*SMALL, "data.target_transform=log_return"))
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    metrics = run.data.metrics
    for key in ("test/mse", "test/mase", "test/mase_mean", "test/mase_median",
                "test/share_beating_persistence", "test/directional_accuracy"):
        assert np.isfinite(metrics[key]), key
    kept = int(metrics["test/series"])
    assert run.data.tags["series"] == str(kept)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/per_series_metrics.csv", "evaluation/series_left_out.csv",
            "evaluation/test_windows.npz"} <= artifacts
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/mase_by_series.png", "plots/forecast.png", "plots/loss_curve.png"} <= plots
    table = pd.read_csv(client.download_artifacts(result.run_id, "evaluation/per_series_metrics.csv"),
                        dtype={"series": str})
    assert len(table) == kept
    assert list(table.columns[:3]) == ["series", "mase", "directional_accuracy"]
    assert metrics["test/mase_median"] == pytest.approx(table["mase"].median(), rel=1e-5)
    assert metrics["test/share_beating_persistence"] == pytest.approx((table["mase"] < 1).mean())

    # The pyfunc: two series' recent closes in one request, each forecast by its own scaler.
    model = load_registered_model(open_store(store), result.model_name, result.model_version)
    net = model.unwrap_python_model().net
    frame = synthetic_universe(n_series=12, days=260, seed=0)
    a, b = net.spec.series[:2]
    recent = pd.concat([frame[frame["series"] == code].tail(15) for code in (b, a)], ignore_index=True)
    answer = model.predict(recent[["series", "close"]])
    assert answer["series"].tolist() == [b, a] and answer["step"].tolist() == [1, 1]
    for code in (b, a):
        closes = frame.loc[frame["series"] == code, "close"].to_numpy()[-10:]
        expected = net.predict_raw(torch.tensor(closes, dtype=torch.float32)[None, :, None],
                                   net.series_ids([code]))
        got = answer.loc[answer["series"] == code, "close"].to_numpy()
        np.testing.assert_allclose(got, expected.numpy().reshape(-1), rtol=1e-5)
    with pytest.raises(RequestError, match="'S9999' is not one this model was trained on") as refused:
        forecast_frame(net, recent.assign(series="S9999"))
    assert "\n" not in refused.value.message
    with pytest.raises(RequestError, match="no 'series' column"):
        forecast_frame(net, recent[["close"]])

    # Champion scoring reads the saved windows with their series codes.
    windows = load_test_windows(open_store(store), result.run_id)
    assert set(windows["series"]) <= set(net.spec.series)
    assert score_on_windows(net, windows, "mse") == pytest.approx(
        float(np.mean((net.predict_raw(torch.tensor(windows["x"]),
                                       net.series_ids(list(windows["series"]))).numpy()
                       - windows["y"]) ** 2)), rel=1e-6)
    assert score_on_windows(net, {**windows, "series": np.array(["S9999"] * len(windows["x"]))},
                            "mse") is None

    # make predict: every series the model knows, each dated after its own last close.
    from pipeline import predict

    predict.main([*SMALL, "data.target_transform=log_return", "output=forecast.csv"])
    table = pd.read_csv("forecast.csv", dtype={"series": str}, parse_dates=["date", "origin"])
    assert sorted(table["series"]) == sorted(net.spec.series)
    last = frame.groupby("series")["date"].max()
    for row in table.itertuples():
        assert row.origin == last[row.series] and row.date == row.origin + pd.offsets.BDay()
    closes = frame.loc[frame["series"] == a, "close"].to_numpy()[-10:]
    expected = net.predict_raw(torch.tensor(closes, dtype=torch.float32)[None, :, None],
                               net.series_ids([a]))
    assert table.loc[table["series"] == a, "close"].item() == pytest.approx(float(expected), rel=1e-5)


def test_a_long_csv_of_tickers_trains_offline(store: str, tmp_path) -> None:
    # A long file as a user exports it: ts_codes, newest day first, the codes' own price levels.
    frame = synthetic_universe(n_series=4, days=200, seed=5)
    frame["series"] = frame["series"].map({"S0000": "600000.SH", "S0001": "600519.SH",
                                           "S0002": "000001.SZ", "S0003": "000858.SZ"})
    path = tmp_path / "closes.csv"
    frame.iloc[::-1].to_csv(path, index=False)
    result = train(compose_config("data=universe_file", f"data.params.path={path}",
                                  "data.lookback=10", "data.min_windows=5",
                                  "data.offline=true", "trainer.max_epochs=1",
                                  "trainer.progress_bar=false", "model.hidden_size=8"))
    run = MlflowClient(store).get_run(result.run_id)
    assert result.experiment == "closes"
    assert run.data.tags["data_source"] == "universe_file"
    assert run.data.metrics["test/series"] >= 2
    net = load_registered_model(open_store(store), result.model_name,
                                result.model_version).unwrap_python_model().net
    assert set(net.spec.series) <= {"600000.SH", "600519.SH", "000001.SZ", "000858.SZ"}


def test_the_dataset_schema_from_the_first_rows_is_the_one_of_every_row() -> None:
    from types import SimpleNamespace

    from mlflow.types.utils import _infer_schema

    from pipeline.tracking.datasets import SCHEMA_ROWS, dataset_for_mlflow

    frame = synthetic_universe(n_series=30, days=100, seed=1)
    assert len(frame) > SCHEMA_ROWS
    dataset = dataset_for_mlflow(SimpleNamespace(frame=frame, digest="d", source="universe",
                                                 cache_path=None))
    assert dataset.schema == _infer_schema(frame.reset_index())
    assert dataset.profile["num_rows"] == len(frame)  # the profile still counts every row


def real_monthly_closes(path) -> list[str]:
    """matplotlib's sample Stocks.csv (Yahoo Finance monthly closes, 1990-2022, of IBM, AAPL,
    MSFT, XRX, AMZN, DELL, GOOGL, ADBE and two indices; wide, with empty rows) as the long file a
    user would export: date, series, close. Returns the tickers."""
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("Stocks.csv") as handle:
        wide = pd.read_csv(handle, comment="#", parse_dates=["Date"])
    long = (wide.melt(id_vars="Date", var_name="series", value_name="close").dropna()
            .rename(columns={"Date": "date"}).drop_duplicates(["series", "date"]))
    long.to_csv(path, index=False)
    return sorted(long["series"].unique())


def test_real_tickers_from_a_long_csv_train_offline_and_forecast_each(store: str, tmp_path) -> None:
    path = tmp_path / "stocks.csv"
    tickers = real_monthly_closes(path)
    assert {"AAPL", "IBM", "MSFT", "^GSPC"} <= set(tickers)
    result = train(compose_config("data=universe_file", f"data.params.path={path}",
                                  "data.lookback=12", "data.min_windows=12", "data.offline=true",
                                  "data.target_transform=log_return", "data.batch_size=64",
                                  "trainer.max_epochs=2", "trainer.progress_bar=false",
                                  "trainer.model_summary=false", "model.hidden_size=8"))
    client = MlflowClient(store)
    table = pd.read_csv(client.download_artifacts(result.run_id, "evaluation/per_series_metrics.csv"))
    left = pd.read_csv(client.download_artifacts(result.run_id, "evaluation/series_left_out.csv"))
    # Every ticker is either scored or named as left out (DELL's 71 months are too few).
    assert sorted([*table["series"], *left["series"]]) == tickers
    assert "DELL" in set(left["series"]) and {"AAPL", "IBM", "MSFT"} <= set(table["series"])
    assert np.isfinite(table["mase"]).all() and (table["targets"] > 0).all()
    net = load_registered_model(open_store(store), result.model_name,
                                result.model_version).unwrap_python_model().net
    recent = pd.read_csv(path)
    recent = recent[recent["series"] == "AAPL"].tail(12)
    answer = forecast_frame(net, recent[["series", "close"]])
    last = recent["close"].iloc[-1]
    assert answer["series"].tolist() == ["AAPL"] and 0.5 * last < answer["close"].item() < 2 * last


def test_a_quantile_universe_scores_intervals_per_series_and_serves_them(store: str) -> None:
    result = train(compose_config(*SMALL, "data.target_transform=log_return", "model.head=quantile",
                                  "promotion.metric=crps"))
    client = MlflowClient(store)
    metrics = client.get_run(result.run_id).data.metrics
    for key in ("test/coverage_80", "test/width_80", "test/crps", "test/coverage_error",
                "test/coverage_error_median"):
        assert np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["test/coverage_80"] <= 1.0
    preds = pd.read_csv(client.download_artifacts(result.run_id, "predictions/test_predictions.csv"))
    inside = (preds["y_true"] >= preds["y_q0.1"]) & (preds["y_true"] <= preds["y_q0.9"])
    assert metrics["test/coverage_80"] == pytest.approx(inside.mean())
    assert (preds["y_q0.1"] <= preds["y_q0.5"]).all() and (preds["y_q0.5"] <= preds["y_q0.9"]).all()
    table = pd.read_csv(client.download_artifacts(result.run_id, "evaluation/per_series_metrics.csv"))
    assert {"coverage_80", "width_80", "crps"} <= set(table.columns)
    assert metrics["test/coverage_error_median"] == pytest.approx(table["coverage_error"].median(),
                                                                  rel=1e-5)
    plots = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert "plots/calibration.png" in plots

    net = load_registered_model(open_store(store), result.model_name,
                                result.model_version).unwrap_python_model().net
    frame = synthetic_universe(n_series=12, days=260, seed=0)
    code = net.spec.series[0]
    answer = forecast_frame(net, frame[frame["series"] == code].tail(10)[["series", "close"]])
    assert answer["close_q0.1"].item() <= answer["close"].item() <= answer["close_q0.9"].item()
    # Promotion ranked on CRPS: the champion re-scores the saved (series-aware) windows.
    windows = load_test_windows(open_store(store), result.run_id)
    assert score_on_windows(net, windows, "crps") is not None
    assert result.promotion is not None and result.promotion.promoted
