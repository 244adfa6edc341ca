"""Every variant trains through the same LightningModule; checkpoints round-trip exactly."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from pipeline.cli import load_config
from pipeline.data.datamodule import build_datamodule
from pipeline.errors import ConfigError
from pipeline.models.backbones import BACKBONES, Backbone, build_backbone
from pipeline.models.metrics import LOGGED_PER_EPOCH, classification_metrics
from pipeline.models.module import ForecastModule
from pipeline.models.network import Forecaster, NetworkSpec
from pipeline.training import build_module

VARIANTS = ["lstm", "gru", "rnn", "peephole", "coupled"]
SMALL = ["data.params.points=300", "data.lookback=16", "model.hidden_size=12", "optim.lr=0.02"]


class LossHistory(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def _fit(module, dm, epochs: int, tmp_path) -> LossHistory:
    history = LossHistory()
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, callbacks=[history],
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    return history


def _setup(*overrides: str):
    cfg = load_config("train", [*SMALL, *overrides])
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg.data)
    return cfg, dm, build_module(cfg, dm.prepared)


def _mean_predictor_mse(dm, start: int) -> float:
    """Validation MSE of always predicting the training mean: 0 for standard-scaled targets."""
    y = torch.cat([batch[1] for batch in dm.val_dataloader()])
    return float(y[:, start:].pow(2).mean())


# After 4 epochs every variant must explain most of the validation variance of cos(t); the
# stacked bidirectional shape (two layers, both directions) must do markedly better.
VAL_LOSS_BOUND = {"plain": 0.5, "stacked-bidirectional": 0.25}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", ["plain", "stacked-bidirectional"])
def test_every_variant_learns_and_checkpoints_round_trip(variant, shape, tmp_path) -> None:
    extra = ["model.num_layers=2", "model.bidirectional=true", "model.dropout=0.1",
             "model.init_state=learned"] if shape != "plain" else []
    cfg, dm, module = _setup(f"model={variant}", *extra)
    _fit(module, dm, 4, tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    val_loss = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]
    reference = _mean_predictor_mse(dm, module.hparams.loss_from_step)
    assert reference == pytest.approx(1.0, abs=0.2)  # cos(t) over whole periods, standardised
    assert val_loss < VAL_LOSS_BOUND[shape] * reference

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = ForecastModule.load_from_checkpoint(path, weights_only=True)
    x = next(iter(dm.test_dataloader()))[0]
    module.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(module(x), restored(x))
    assert restored.net.spec.variant == variant


@pytest.mark.parametrize("variant", sorted(BACKBONES))
def test_every_backbone_meets_the_protocol(variant) -> None:
    backbone = build_backbone(variant, input_size=3, hidden_size=5, num_layers=2,
                              bidirectional=True)
    assert isinstance(backbone, Backbone) and isinstance(backbone, torch.nn.Module)
    assert (backbone.output_size, backbone.num_directions) == (10, 2)
    outputs, state = backbone(torch.randn(4, 7, 3))
    assert outputs.shape == (4, 7, 10)
    states = state if backbone.carries_cell_state else (state,)
    assert len(states) == (2 if backbone.carries_cell_state else 1)
    assert all(s.shape == (2 * 2, 4, 5) for s in states)
    # the final state seeds a later call (seq2seq's decoder relies on it)
    assert backbone(torch.randn(4, 1, 3), state)[0].shape == (4, 1, 10)


def test_unknown_backbone_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown variant; choose one of coupled, gru, lstm"):
        Forecaster(_seq2seq_spec(cell="seq2seq"))


def test_learned_initial_state_is_trained(tmp_path) -> None:
    _, dm, module = _setup("model=lstm", "model.init_state=learned")
    before = module.net.initial_state.h0.detach().clone()
    _fit(module, dm, 2, tmp_path)
    assert not torch.equal(before, module.net.initial_state.h0.detach())


def _seq2seq_spec(**kw) -> NetworkSpec:
    base = dict(variant="seq2seq", cell="gru", inputs=["a", "b"], targets=["a"], lookback=6,
                horizon=4, mode="forecast", hidden_size=8)
    return NetworkSpec(**{**base, **kw})


@pytest.mark.parametrize("cell", VARIANTS)
def test_seq2seq_shapes_over_every_cell(cell) -> None:
    net = Forecaster(_seq2seq_spec(cell=cell, bidirectional=True, num_layers=2))
    assert net(torch.randn(3, 6, 2)).shape == (3, 4, 1)


def test_seq2seq_teacher_forcing_feeds_true_values_only_when_asked() -> None:
    torch.manual_seed(0)
    net = Forecaster(_seq2seq_spec())
    x = torch.randn(5, 6, 2)
    teacher_a, teacher_b = torch.randn(5, 4, 1), torch.randn(5, 4, 1)
    free = net(x)
    # ratio 1: step k's input is the true value k-1, so the first step is unaffected, later ones change
    forced_a = net(x, teacher=teacher_a, teacher_forcing=1.0)
    forced_b = net(x, teacher=teacher_b, teacher_forcing=1.0)
    assert torch.allclose(forced_a[:, 0], free[:, 0]) and torch.allclose(forced_a[:, 0], forced_b[:, 0])
    assert not torch.allclose(forced_a[:, 1:], forced_b[:, 1:])
    # ratio 0 (and evaluation): autoregressive, the teacher is ignored
    assert torch.allclose(net(x, teacher=teacher_a, teacher_forcing=0.0), free)
    # decoding starts from the last observed target value (column a of the window)
    x2 = x.clone()
    x2[:, -1, 0] += 1.0
    assert not torch.allclose(net(x2)[:, 0], free[:, 0])


def test_seq2seq_trains_on_a_multi_step_horizon(tmp_path) -> None:
    cfg, dm, module = _setup("model=seq2seq", "model.cell=gru", "data.mode=forecast", "data.horizon=5",
                             "data.burn_in=0", "data.inputs=[sin,cos]", "model.recurrent_l2=1e-4")
    history = _fit(module, dm, 4, tmp_path)
    assert history.losses[-1] < history.losses[0]
    assert module(next(iter(dm.val_dataloader()))[0]).shape[1:] == (5, 1)


def test_seq2seq_decoder_is_a_unidirectional_stacked_backbone() -> None:
    net = Forecaster(_seq2seq_spec(cell="lstm", bidirectional=True, num_layers=2))
    decoder = net.head.backbone
    assert isinstance(decoder, Backbone)
    assert (decoder.num_layers, decoder.num_directions) == (2, 1)
    assert "head.backbone.weight_hh_l1" in net.state_dict()


def test_recurrent_l2_penalises_only_hidden_to_hidden_weights() -> None:
    spec = NetworkSpec(variant="lstm", inputs=["a"], targets=["a"], lookback=4).to_dict()
    module = ForecastModule(spec, recurrent_l2=0.5)
    expected = 0.5 * module.net.backbone.weight_hh_l0.pow(2).sum()
    assert torch.allclose(module._recurrent_penalty(), expected)


def test_classification_head_learns_per_step_bits(tmp_path) -> None:
    """Per-step binary target (was the previous input positive?), BCE loss, accuracy,
    log-loss and exact-match metrics."""
    spec = NetworkSpec(variant="gru", inputs=["x"], targets=["bit"], lookback=10, mode="sequence",
                       task="classification", hidden_size=16).to_dict()
    module = ForecastModule(spec, lr=0.03, loss_from_step=2)
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    bit = torch.cat([torch.zeros(1), (x[:-1] > 0).float()])
    windows = torch.stack([x[i:i + 10] for i in range(0, 1990, 3)])[..., None]
    labels = torch.stack([bit[i:i + 10] for i in range(0, 1990, 3)])[..., None]
    data = torch.utils.data.TensorDataset(windows, labels)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    trainer = L.Trainer(max_epochs=8, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, loader, torch.utils.data.DataLoader(data, batch_size=64))
    metrics = trainer.validate(module, torch.utils.data.DataLoader(data, batch_size=64), verbose=False)[0]
    assert metrics["val/accuracy"] > 0.9
    assert 0 <= metrics["val/exact_match"] <= metrics["val/accuracy"]
    assert metrics["val/log_loss"] < math.log(2)  # better than a coin's 0.5 for every bit
    probs = module.net.predict_raw(windows[:4])
    assert ((probs >= 0) & (probs <= 1)).all()


# Two samples of two labels: predicted labels (p > 0.5) [[1, 0], [1, 0]] against [[1, 0], [0, 0]].
PROBS = torch.tensor([[0.9, 0.2], [0.6, 0.4]])
LABELS = torch.tensor([[1, 0], [0, 0]])
HAND = {"accuracy": 3 / 4, "exact_match": 1 / 2,
        "log_loss": -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.6)) / 4}


def test_classification_metrics_against_hand_computed_values() -> None:
    metrics = classification_metrics("test/", labels_per_sample=2)
    for sample in range(2):  # one sample per batch: the states accumulate across batches
        metrics.update(PROBS[sample:sample + 1], LABELS[sample:sample + 1])
    computed = {k: float(v) for k, v in metrics.compute().items()}
    assert computed == pytest.approx({f"test/{k}": v for k, v in HAND.items()})


def test_a_confident_wrong_label_costs_a_bounded_log_loss() -> None:
    metrics = classification_metrics("", labels_per_sample=2)
    metrics.update(torch.tensor([[0.0, 1.0]]), torch.tensor([[1, 1]]))
    # torch clamps log(0) at -100: one label costs 100, the right one 0
    assert float(metrics.compute()["log_loss"]) == pytest.approx(50.0)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_the_module_logs_the_metrics_of_its_task(task) -> None:
    spec = NetworkSpec(variant="gru", inputs=["a"], targets=["a"], lookback=4, horizon=3,
                       task=task).to_dict()
    module = ForecastModule(spec)
    names = {f"{stage}/{m}" for stage in ("val", "test") for m in LOGGED_PER_EPOCH[task]}
    assert set(module.val_metrics.keys()) | set(module.test_metrics.keys()) == names


def test_one_label_per_sample_scores_exact_match_as_accuracy() -> None:
    """Forecast mode, one target, horizon 1: torchmetrics' multilabel exact match needs two
    labels, and with one a sample is exactly right when its label is."""
    spec = NetworkSpec(variant="gru", inputs=["a"], targets=["up"], lookback=4, horizon=1,
                       task="classification").to_dict()
    metrics = ForecastModule(spec).test_metrics
    metrics.update(torch.tensor([[0.7], [0.2], [0.9]]), torch.tensor([[1], [1], [0]]))
    computed = metrics.compute()
    assert float(computed["test/exact_match"]) == pytest.approx(1 / 3)
    assert float(computed["test/accuracy"]) == pytest.approx(1 / 3)
