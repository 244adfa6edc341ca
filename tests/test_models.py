"""Every variant trains through the same LightningModule; checkpoints round-trip exactly."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from pipeline.data.datamodule import build_datamodule
from pipeline.errors import ConfigError
from pipeline.models.module import ForecastModule
from pipeline.models.network import Forecaster, NetworkSpec
from pipeline.train import build_module
from tests.conftest import compose_config

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
    cfg = compose_config(*SMALL, *overrides)
    L.seed_everything(0, verbose=False)
    dm = build_datamodule(cfg.data)
    return cfg, dm, build_module(cfg, dm)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", ["plain", "stacked-bidirectional"])
def test_every_variant_learns_and_checkpoints_round_trip(variant, shape, tmp_path) -> None:
    extra = ["model.num_layers=2", "model.bidirectional=true", "model.dropout=0.1",
             "model.init_state=learned"] if shape != "plain" else []
    cfg, dm, module = _setup(f"model={variant}", *extra)
    history = _fit(module, dm, 4, tmp_path)
    assert history.losses[-1] < history.losses[0]

    path = tmp_path / "model.ckpt"
    trainer = L.Trainer(logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    restored = ForecastModule.load_from_checkpoint(path, weights_only=True)
    x = next(iter(dm.test_dataloader()))[0]
    module.eval()
    restored.eval()
    with torch.no_grad():
        assert torch.equal(module(x), restored(x))
    assert restored.net.spec.variant == variant


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


def test_seq2seq_rejects_a_per_step_task() -> None:
    with pytest.raises(ConfigError, match="seq2seq"):
        Forecaster(_seq2seq_spec(mode="sequence"))


def test_recurrent_l2_penalises_only_hidden_to_hidden_weights() -> None:
    spec = NetworkSpec(variant="lstm", inputs=["a"], targets=["a"], lookback=4).to_dict()
    module = ForecastModule(spec, recurrent_l2=0.5)
    expected = 0.5 * module.net.backbone.weight_hh_l0.pow(2).sum()
    assert torch.allclose(module._recurrent_penalty(), expected)


def test_classification_head_learns_per_step_bits(tmp_path) -> None:
    """Per-step binary target (was the previous input positive?), BCE loss, accuracy and
    exact-match metrics."""
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
    probs = module.net.predict_raw(windows[:4])
    assert ((probs >= 0) & (probs <= 1)).all()
