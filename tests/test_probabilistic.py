"""Distribution heads (model.head) and the interval metrics: scores against hand-computed values,
monotone quantiles by construction, heads that recover known noise, calibrated coverage."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline import intervals
from pipeline.cli import load_config
from pipeline.config import metric_direction
from pipeline.data.datamodule import build_datamodule
from pipeline.errors import ConfigError
from pipeline.evaluate import (
    interval_scores_on_windows,
    metrics_with_baselines,
    predictions_frame,
    probabilistic_metrics,
)
from pipeline.models.distributions import DENSE_LEVELS, DistributionLayer, pinball_loss
from pipeline.models.module import ForecastModule
from pipeline.models.network import Forecaster, NetworkSpec
from pipeline.tracking.plots import plot_calibration, plot_forecast
from pipeline.training import build_module

Z90 = 1.2815515655446004  # the standard normal's 0.9 quantile

# A noisy sine forecast one step ahead from (sin, cos): the clean cos input fixes the phase, the
# target carries gaussian noise (sd 0.2). GRU: small and quick on a shared 2-core CPU.
NOISY_SINE = ["data.params.points=3000", "data.params.periods=30", "data.params.noise=0.2",
              "data.inputs=[sin,cos]", "data.targets=[sin]", "data.mode=forecast", "data.burn_in=0",
              "data.lookback=8", "data.horizon=1", "data.batch_size=64", "model.name=gru",
              "model.hidden_size=16", "optim.lr=0.02", "data.split.train=0.6",
              "data.split.val=0.1", "data.split.test=0.3"]


def _trainer(epochs: int, tmp_path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False,
                     default_root_dir=tmp_path)


def _fit_noisy_sine(head: str, tmp_path, epochs: int = 6, *overrides: str):
    cfg = load_config("train", [*NOISY_SINE, f"model.head={head}", *overrides])
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg.data)
    module = build_module(cfg, dm.prepared)
    _trainer(epochs, tmp_path).fit(module, datamodule=dm)
    return cfg, dm, module


# --- scores against hand-computed values ----------------------------------------------------------


def test_pinball_loss_matches_hand_computed_values() -> None:
    y = np.array([1.0, 2.0, 3.0])
    # errors y - q: -0.5, 0.5, 1.5; level 0.1: max(0.1 e, -0.9 e) = 0.45, 0.05, 0.15
    np.testing.assert_allclose(intervals.pinball(y, np.full(3, 1.5), 0.1), [0.45, 0.05, 0.15])
    # level 0.9: max(0.9 e, -0.1 e) = 0.05, 0.45, 1.35
    np.testing.assert_allclose(intervals.pinball(y, np.full(3, 1.5), 0.9), [0.05, 0.45, 1.35])
    # the training loss is the mean over values and levels of the same numbers
    pred = torch.full((3, 2), 1.5)
    loss = pinball_loss(pred, torch.tensor(y, dtype=torch.float32), torch.tensor([0.1, 0.9]))
    assert float(loss) == pytest.approx((0.45 + 0.05 + 0.15 + 0.05 + 0.45 + 1.35) / 6)


def test_crps_from_quantiles_is_twice_the_mean_pinball() -> None:
    # y = 0 against quantiles -1, 0, 1 at 0.25, 0.5, 0.75: pinball 0.25, 0, 0.25 -> 2 * 1/6
    crps = intervals.crps_from_quantiles(np.zeros(1), np.array([[-1.0, 0.0, 1.0]]), [0.25, 0.5, 0.75])
    assert crps[0] == pytest.approx(1 / 3)


def test_gaussian_crps_closed_form_matches_hand_value_and_numerical_integral() -> None:
    # At y = mu: sigma * (2 phi(0) - 1/sqrt(pi)) = sigma * (sqrt(2/pi) - 1/sqrt(pi))
    assert intervals.crps_gaussian(np.array([3.0]), np.array([3.0]), np.array([2.0]))[0] == \
        pytest.approx(2.0 * (math.sqrt(2 / math.pi) - 1 / math.sqrt(math.pi)))
    y, mu, sigma = np.array([-1.0, 0.3, 2.5]), np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.5, 2.0])
    layer = DistributionLayer("gaussian")
    params = torch.tensor(np.stack([mu, sigma], axis=-1), dtype=torch.float64)[:, None, :]
    dense = layer.quantiles(params, DENSE_LEVELS)[:, 0].numpy()
    numerical = intervals.crps_from_quantiles(y, dense, DENSE_LEVELS)
    np.testing.assert_allclose(numerical, intervals.crps_gaussian(y, mu, sigma), rtol=0.01)
    # a Student-t with many degrees of freedom is that gaussian
    np.testing.assert_allclose(intervals.crps_student_t(y, mu, sigma, np.full(3, 1e6)),
                               intervals.crps_gaussian(y, mu, sigma), rtol=0.01)


def test_interval_scores_match_hand_counts() -> None:
    y = np.array([0.0, 1.0, 2.0, 3.0])
    quantiles = np.array([[-1, 0, 1], [0.5, 1, 1.5], [2.5, 3, 3.5], [2, 3, 4]], dtype=float)
    scores = intervals.interval_scores(y, quantiles, [0.1, 0.5, 0.9])
    assert scores["coverage_80"] == 0.75  # the third value (2 < 2.5) falls outside
    assert scores["width_80"] == pytest.approx((2 + 1 + 1 + 2) / 4)
    assert scores["coverage_error"] == pytest.approx(0.05)
    # median errors 0, 0, -1, 0: pinball at 0.5 is half their absolute mean
    assert scores["pinball_q0.5"] == pytest.approx(0.5 / 4)
    assert scores["crps"] == pytest.approx(2 * np.mean(
        [scores["pinball_q0.1"], scores["pinball_q0.5"], scores["pinball_q0.9"]]))


def test_conformal_offset_is_the_finite_sample_quantile_of_the_excess() -> None:
    y = np.arange(10, dtype=float)
    lower, upper = y - 1, y + 1  # every value inside by 1: scores max(lower - y, y - upper) = -1
    upper[[0, 1]] = y[[0, 1]] - 3  # two values above their upper bound by 3
    # n = 10: the k-th smallest of eight -1s and two 3s, k = ceil(11 * nominal)
    assert intervals.conformal_offset(y, lower, upper, 0.8) == 3.0  # k = 9: widen to cover
    assert intervals.conformal_offset(y, lower, upper, 0.7) == -1.0  # k = 8: narrow, over-covered
    assert intervals.conformal_offset(y, lower, upper, 0.99) == 3.0  # k = 11 > n: the largest


def test_symmetric_pairs_and_labels() -> None:
    assert intervals.symmetric_pairs([0.05, 0.1, 0.5, 0.9, 0.95]) == [(0.05, 0.95), (0.1, 0.9)]
    assert intervals.symmetric_pairs([0.1, 0.5, 0.8]) == []
    assert intervals.interval_label(0.1, 0.9) == "80"
    assert intervals.calibration_curves({"test/coverage_80": 0.7, "test/conformal_coverage_90": 0.9,
                                         "test/width_80": 1.0}) == {"model": {0.8: 0.7},
                                                                    "conformal": {0.9: 0.9}}


# --- heads -------------------------------------------------------------------------------------


def test_quantile_head_is_monotone_by_construction() -> None:
    torch.manual_seed(0)
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    layer = DistributionLayer("quantile", levels)
    raw = torch.randn(256, 4, 2 * len(levels)) * 50  # far outside any trained range
    params = layer(raw)
    assert params.shape == (256, 4, 2, len(levels))
    assert bool((params.diff(dim=-1) >= 0).all())
    assert torch.equal(layer.median(params), params[..., 2])
    # interpolated levels stay ordered and inside their neighbours
    between = layer.quantiles(params, [0.1, 0.5, 0.6, 0.9])
    assert bool((between.diff(dim=-1) >= 0).all())
    with pytest.raises(ValueError, match="outside"):
        layer.quantiles(params, [0.01])


def test_forecaster_point_output_is_the_raw_scale_median_of_every_head() -> None:
    torch.manual_seed(0)
    scaler = {"center": [10.0, 0.0], "scale": [3.0, 1.0]}
    for head in ("quantile", "gaussian", "student_t"):
        net = Forecaster(NetworkSpec(variant="gru", inputs=["a", "b"], targets=["a"], lookback=5,
                                     horizon=2, hidden_size=8, head=head, x_scaler=scaler,
                                     y_scaler={"center": [10.0], "scale": [3.0]}))
        x_raw = torch.randn(7, 5, 2) * 3 + 10
        point = net.predict_raw(x_raw)
        quantiles = net.predict_quantiles(x_raw)
        assert point.shape == (7, 2, 1) and quantiles.shape == (7, 2, 1, 3)
        torch.testing.assert_close(quantiles[..., 1], point)  # 0.5 is the point forecast
        assert bool((quantiles.diff(dim=-1) > 0).all())


def test_old_specs_load_as_point_heads_with_unchanged_weights() -> None:
    spec = NetworkSpec(variant="lstm", inputs=["a"], targets=["a"], lookback=4, hidden_size=4)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("head", "quantiles")}
    net = Forecaster(NetworkSpec.from_dict(old))
    assert net.spec.head == "point" and net.levels == ()
    assert net.head.proj.out_features == 1  # one value per target: checkpoints of before load
    with pytest.raises(ValueError, match="point head"):
        net.predict_quantiles(torch.zeros(1, 4, 1))


def _known_noise_series(n: int, sigma: float, seed: int):
    """Windows of a clean sine, each followed by the next clean value plus N(0, sigma^2) noise."""
    rng = np.random.default_rng(seed)
    clean = np.sin(0.05 * np.arange(n + 9) + rng.uniform(0, 2 * np.pi))  # one frequency for all
    x = np.lib.stride_tricks.sliding_window_view(clean[:-1], 8)[:n, :, None]
    target = clean[8:8 + n]
    y = target + sigma * rng.standard_normal(n)
    return (torch.tensor(x.copy(), dtype=torch.float32),
            torch.tensor(y[:, None, None], dtype=torch.float32), target)


@pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
def test_quantile_head_recovers_the_quantiles_of_known_gaussian_noise(tmp_path) -> None:
    sigma = 0.3
    L.seed_everything(0, verbose=False)
    spec = NetworkSpec(variant="gru", inputs=["s"], targets=["s"], lookback=8, hidden_size=16,
                       head="quantile", quantiles=[0.1, 0.5, 0.9])
    module = ForecastModule(spec.to_dict(), lr=0.02)
    x, y, _ = _known_noise_series(3000, sigma, seed=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    _trainer(8, tmp_path).fit(module, train_dataloaders=loader)
    x_new, _, clean = _known_noise_series(500, sigma, seed=2)
    q = module.net.predict_quantiles(x_new)[:, 0, 0].numpy()  # (500, 3)
    # The noise's quantiles about the clean value: -Z90 sigma, 0, +Z90 sigma. The spreads are the
    # noise's alone; the median may keep a small bias of the short training.
    np.testing.assert_allclose([np.mean(q[:, 1] - q[:, 0]), np.mean(q[:, 2] - q[:, 1])],
                               [Z90 * sigma, Z90 * sigma], rtol=0.12)
    assert abs(np.mean(q[:, 1] - clean)) < 0.15 * sigma
    assert np.mean(np.abs(q[:, 1] - clean)) < 0.3 * sigma  # it tracks the signal, not the mean


def test_quantile_head_covers_a_held_out_series_at_its_nominal_level(tmp_path) -> None:
    cfg, dm, module = _fit_noisy_sine("quantile", tmp_path)
    preds = predictions_frame(module.net, dm.prepared)
    assert {"y_q0.1", "y_q0.5", "y_q0.9"} <= set(preds.columns)
    np.testing.assert_allclose(preds["y_q0.5"], preds["y_pred"], rtol=1e-6)
    metrics = probabilistic_metrics(module.net, dm.prepared, preds=preds)
    assert abs(metrics["test/coverage_80"] - 0.8) <= 0.05
    assert abs(metrics["test/conformal_coverage_80"] - 0.8) <= 0.05
    # the noise's 80% interval is 2 * Z90 * 0.2 wide; the model's may add its own error
    assert 2 * Z90 * 0.2 * 0.9 < metrics["test/width_80"] < 2 * Z90 * 0.2 * 1.3
    assert metrics["test/crps"] < metrics["test/persistence_crps"]
    assert metrics["test/relative_crps"] == pytest.approx(
        metrics["test/crps"] / metrics["test/persistence_crps"])
    assert abs(metrics["test/persistence_coverage_80"] - 0.8) <= 0.1
    # persistence's median is persistence itself: its q0.5 pinball is half its MAE, on the same windows
    point = metrics_with_baselines(preds, dm.prepared.frame, "forecast")
    assert metrics["test/persistence_pinball_q0.5"] == pytest.approx(point["test/persistence_mae"] / 2,
                                                                     rel=0.05)
    # what promotion ranks on: the same scores from raw windows alone
    test = dm.prepared.windows["test"]
    on_windows = interval_scores_on_windows(module.net, dm.prepared.x_scaler.inverse(test.x),
                                            dm.prepared.y_scaler.inverse(test.y))
    assert on_windows["crps"] == pytest.approx(metrics["test/crps"], rel=1e-5)
    assert on_windows["coverage_error"] == pytest.approx(metrics["test/coverage_error"], abs=1e-9)


@pytest.mark.parametrize("head", ["gaussian", "student_t"])
def test_distribution_heads_train_by_likelihood_and_give_ordered_quantiles(head, tmp_path) -> None:
    cfg, dm, module = _fit_noisy_sine(head, tmp_path, 4)
    x, y = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        out = module.net(x)
    raw = module.net.to_parameters(out)
    torch.testing.assert_close(raw["mu"], module.net.to_output(out))
    # sigma of the standard-scaled noise, back on the raw scale: about the true 0.2
    assert 0.15 < float(raw["sigma"].median()) < 0.3
    if head == "student_t":
        assert bool((raw["df"] > 2).all())
    q = module.net.to_quantiles(out, [0.05, 0.1, 0.5, 0.9, 0.95])
    assert bool((q.diff(dim=-1) > 0).all())
    metrics = probabilistic_metrics(module.net, dm.prepared)
    assert abs(metrics["test/coverage_80"] - 0.8) <= 0.05
    assert metrics["test/crps"] < metrics["test/persistence_crps"]


def test_seq2seq_decodes_quantiles_and_feeds_back_its_median(tmp_path) -> None:
    cfg, dm, module = _fit_noisy_sine("quantile", tmp_path, 2, "model.name=seq2seq", "model.cell=gru",
                                      "data.horizon=3", "model.teacher_forcing=0.5",
                                      "data.params.points=1200")
    net = module.net
    x, _ = next(iter(dm.test_dataloader()))
    with torch.no_grad():
        out = net(x)
    assert out.shape == (len(x), 3, 1, 3)
    assert bool((out.diff(dim=-1) >= 0).all())
    # decoding by hand from the median reproduces the second step: the median is what is fed back
    decoder = net.head
    _, final = net.backbone(x)
    with torch.no_grad():
        state = decoder.bridge_state(final)
        first, state = decoder.backbone(net._last_targets(x)[:, None, :], state)
        step0 = decoder.distribution(decoder.proj(first))
        second, _ = decoder.backbone(decoder.distribution.median(step0), state)
        step1 = decoder.distribution(decoder.proj(second))
    torch.testing.assert_close(step1[:, 0], out[:, 1])
    metrics = probabilistic_metrics(net, dm.prepared)
    assert {"test/coverage_80", "test/crps", "test/persistence_crps"} <= set(metrics)


def test_point_heads_get_no_interval_metrics(tmp_path) -> None:
    cfg = load_config("train", [*NOISY_SINE, "data.params.points=300"])
    dm = build_datamodule(cfg.data)
    module = build_module(cfg, dm.prepared)
    preds = predictions_frame(module.net, dm.prepared)
    assert not [c for c in preds.columns if c.startswith("y_q")]
    assert probabilistic_metrics(module.net, dm.prepared, preds=preds) == {}


def test_plots_shade_bands_and_draw_calibration(tmp_path) -> None:
    import matplotlib.image

    rows = np.arange(40)
    frame = np.sin(rows / 5)
    import pandas as pd

    preds = pd.DataFrame({"split": "test", "target": "y", "t": rows, "y_pred": frame,
                          "y_q0.1": frame - 0.3, "y_q0.5": frame, "y_q0.9": frame + 0.3})
    truth = pd.DataFrame({"y": frame}, index=pd.Index(rows, name="t"))
    banded = plot_forecast(truth, preds, "t", tmp_path / "band.png")
    plain = plot_forecast(truth, preds[["split", "target", "t", "y_pred"]], "t", tmp_path / "plain.png")
    assert not np.array_equal(matplotlib.image.imread(banded), matplotlib.image.imread(plain))
    path = plot_calibration({"model": {0.8: 0.78}, "persistence": {0.8: 0.83}}, tmp_path / "cal.png")
    assert matplotlib.image.imread(path).ndim == 3


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.head=median"], "model.head='median': must be one of point, quantile"),
    (["model.head=quantile", "model.quantiles=[0.1,0.9]"], "must include 0.5"),
    (["model.head=quantile", "model.quantiles=[0.5,0.3]"], "strictly increasing"),
    (["model.head=quantile", "model.quantiles=[0,0.5]"], "strictly between 0 and 1"),
    (["promotion.metric=crps"], "promotion.metric='crps': ranks intervals, which model.head='point'"),
    (["data=binary_add", "model.head=gaussian"], "needs data.task=regression"),
])
def test_config_refuses_bad_heads(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")
                       .replace("(", r"\(")):
        load_config("train", overrides)


def test_config_accepts_interval_metrics_for_distribution_heads() -> None:
    cfg = load_config("train", ["model.head=student_t", "promotion.metric=coverage_error",
                                "model.quantiles=[0.05,0.5,0.95]"])
    assert cfg.promotion.direction == "minimize" == metric_direction("crps")
    assert cfg.model.quantiles == [0.05, 0.5, 0.95]


# --- the logged model answers with its quantiles -----------------------------------------------------


@pytest.mark.parametrize("head", ["quantile", "student_t"])
def test_the_pyfunc_returns_ordered_quantiles_on_the_raw_scale(tmp_path, head) -> None:
    import mlflow
    import pandas as pd

    from pipeline.tracking.pyfunc import log_forecaster
    from pipeline.tracking.run import open_run
    from pipeline.tracking.store import open_store

    # Raw closes near 3000 (scale 40): scaled outputs of an untrained net land within a few
    # scales of the center, so raw-scale answers sit near 3000 and scaled ones near 0.
    spec = NetworkSpec(variant="gru", inputs=["close"], targets=["close"], lookback=5, horizon=2,
                       hidden_size=8, head=head, quantiles=[0.1, 0.5, 0.9],
                       x_scaler={"center": [3000.0], "scale": [40.0]},
                       y_scaler={"center": [3000.0], "scale": [40.0]})
    torch.manual_seed(0)
    net = Forecaster(spec).eval()
    store = open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "mlartifacts"))
    handle = open_run(store, "quantiles", "pyfunc", {}, {})
    recent = pd.DataFrame({"close": 3000.0 + 10 * np.sin(np.arange(7.0))})
    logged = log_forecaster(handle, net, recent.iloc[-5:].reset_index(drop=True), "closes")
    with store.fluent():  # models:/ URIs resolve through MLflow's process-wide store
        model = mlflow.pyfunc.load_model(f"models:/closes/{logged.version}")
        outputs = mlflow.models.get_model_info(f"models:/closes/{logged.version}").signature.outputs
    answer = model.predict(recent)

    columns = ["step", "close", "close_q0.1", "close_q0.5", "close_q0.9"]
    assert list(answer.columns) == columns
    assert answer["step"].tolist() == [1, 2]
    q = answer[["close_q0.1", "close_q0.5", "close_q0.9"]].to_numpy()
    assert (np.diff(q, axis=1) > 0).all()  # ordered, and an interval of some width
    np.testing.assert_allclose(answer["close"], answer["close_q0.5"], rtol=1e-6)  # point = median
    assert (np.abs(q - 3000.0) < 400).all()  # raw scale, not scaled
    x_raw = torch.tensor(recent["close"].to_numpy()[-5:], dtype=torch.float32)[None, :, None]
    expected = net.predict_quantiles(x_raw)[0, :, 0, :].numpy()
    np.testing.assert_allclose(q, expected, rtol=1e-5)
    assert outputs.input_names() == columns  # the signature describes the quantile columns
