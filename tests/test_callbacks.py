"""The Trainer's callbacks and the module's own optimizer step: last.ckpt written by time and at
the end, the progress bar throttled by time, gradients clipped and a plain loop's updates
reproduced step for step."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.callbacks import BestCheckpoint, EarlyStop, LastCheckpoint, ProgressBar
from pipeline.models.module import ForecastModule
from pipeline.models.network import NetworkSpec

LOOKBACK = 6


def _spec() -> dict:
    return NetworkSpec(variant="lstm", inputs=["x"], targets=["y"], lookback=LOOKBACK, horizon=1,
                       hidden_size=8).to_dict()


def _loader(n: int = 64, batch: int = 16, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, LOOKBACK, 1, generator=generator)
    return DataLoader(TensorDataset(x, 10 * x[:, -1:, :]), batch_size=batch)


class SaveCounter(L.Callback):
    """The epoch of every checkpoint Lightning writes."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.epochs.append(checkpoint["epoch"])


def _fit(tmp_path, callbacks, epochs: int = 4, **module_args) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks, accelerator="cpu",
                        default_root_dir=tmp_path)
    trainer.fit(ForecastModule(_spec(), **module_args), _loader(), _loader(seed=1))
    return trainer


def test_last_checkpoint_is_written_first_then_by_time_and_always_after_the_final_epoch(tmp_path) -> None:
    counter = SaveCounter()
    last = LastCheckpoint(str(tmp_path), every_s=3600)
    _fit(tmp_path, [last, counter], epochs=4)
    assert counter.epochs == [0, 3]  # epoch 0 (nothing written yet), then the final one
    assert torch.load(last.last_model_path or last.best_model_path, weights_only=True)["epoch"] == 3


def test_last_checkpoint_every_epoch_when_its_interval_is_zero(tmp_path) -> None:
    counter = SaveCounter()
    _fit(tmp_path, [LastCheckpoint(str(tmp_path), every_s=0), counter], epochs=4)
    assert counter.epochs == [0, 1, 2, 3]


def test_last_checkpoint_is_written_at_the_epoch_early_stopping_ends(tmp_path) -> None:
    counter = SaveCounter()
    last = LastCheckpoint(str(tmp_path), every_s=3600)
    # lr=0: val/loss never improves, so patience 1 stops after the second epoch (index 1).
    trainer = _fit(tmp_path, [EarlyStop(patience=1), last, counter], epochs=10, lr=0.0)
    assert trainer.current_epoch == 2  # stopped after epochs 0 and 1
    assert counter.epochs == [0, 1]
    assert torch.load(last.best_model_path, weights_only=True)["epoch"] == 1


def test_cached_state_keys_equal_lightnings_own() -> None:
    """Checkpoints store callback states under these keys; caching must not change them."""
    best = BestCheckpoint("/tmp/x")
    stop = EarlyStop(patience=3)
    assert best.state_key == best._generate_state_key(
        monitor="val/loss", mode="min", every_n_train_steps=0, every_n_epochs=1,
        train_time_interval=None)
    assert stop.state_key == stop._generate_state_key(monitor="val/loss", mode="min")
    assert LastCheckpoint("/tmp/x", 30).state_key != best.state_key  # distinct states


def test_progress_bar_redraws_by_time_and_at_each_loops_end(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr("pipeline.callbacks.time.monotonic", lambda: now[0])
    bar = ProgressBar(interval_s=0.25)
    drawn = []
    for step in range(1, 11):
        now[0] += 0.1
        drawn.append(bar._should_update(step, 10))
    # first step draws (nothing drawn yet), then every third 0.1 s step, and the last one
    assert [s for s, d in zip(range(1, 11), drawn, strict=True) if d] == [1, 4, 7, 10]
    bar.disable()
    assert not bar._should_update(10, 10)


def _plain_reference(clip: float | None, steps: int) -> list[torch.Tensor]:
    """A hand-written Adam loop with the same network, initial weights and batches."""
    L.seed_everything(0, verbose=False)
    module = ForecastModule(_spec(), lr=0.05)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for x, y in list(_loader())[:steps]:
        loss = torch.nn.functional.mse_loss(module.net(x), y)
        optimizer.zero_grad()
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("clip", [None, 0.01])
def test_the_modules_own_step_matches_a_plain_loop_with_and_without_clipping(tmp_path, clip) -> None:
    norms = []

    class Norms(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    L.seed_everything(0, verbose=False)
    module = ForecastModule(_spec(), lr=0.05, gradient_clip_val=clip)
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[Norms()],
                        accelerator="cpu", default_root_dir=tmp_path, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, _loader())
    assert trainer.global_step == 3  # Lightning counts the module's own steps
    expected = _plain_reference(clip, steps=3)
    for got, want in zip(module.parameters(), expected, strict=True):
        torch.testing.assert_close(got, want)
    if clip:  # the gradients the optimizer stepped on were clipped to the configured norm
        assert max(norms) == pytest.approx(clip, rel=1e-4)
    else:
        assert min(norms) > 0.01  # so the clipped case above really clipped
