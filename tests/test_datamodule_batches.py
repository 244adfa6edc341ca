"""The DataModule serves whole batches (a gather per batch, no per-window collate): the same
windows in the same order as a shuffled per-item DataLoader, each window once per epoch, sharded
per rank under DDP, through worker processes, and moved to a device as a pair."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data import datamodule as dm_module
from pipeline.data.datamodule import EVAL_BATCH_WINDOWS, SeriesDataModule, prepare_series
from pipeline.data.digest import frame_digest
from pipeline.data.loading import FetchResult
from pipeline.data.windowing import WindowSpec

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _prepared(rows: int = 400, lookback: int = 6):
    values = np.sin(np.arange(rows) / 7.0)
    frame = pd.DataFrame({"a": values, "b": np.cos(np.arange(rows) / 7.0)},
                         index=pd.RangeIndex(rows, name="t"))
    fetched = FetchResult(frame=frame, digest=frame_digest(frame), source="unit")
    return prepare_series(fetched, ["a"], ["b"], WindowSpec(lookback=lookback), FRACTIONS)


def _window_ids(dataset_x: torch.Tensor, served_x: torch.Tensor) -> list[int]:
    """Which windows of the split a batch holds (exact match of the whole window)."""
    flat = dataset_x.reshape(len(dataset_x), -1)
    return [int(torch.nonzero((flat == w.reshape(1, -1)).all(dim=1))[0]) for w in served_x]


def test_training_batches_match_a_shuffled_per_item_loader() -> None:
    prepared = _prepared()
    train = prepared.windows["train"]
    reference = DataLoader(TensorDataset(torch.tensor(train.x, dtype=torch.float32),
                                         torch.tensor(train.y, dtype=torch.float32)),
                           batch_size=16, shuffle=True)
    dm = SeriesDataModule(prepared, batch_size=16)
    for seed in (0, 7):
        L.seed_everything(seed, verbose=False)
        expected = list(reference)
        L.seed_everything(seed, verbose=False)
        served = list(dm.train_dataloader())
        assert len(served) == len(expected) == -(-len(train) // 16)  # the last, partial batch kept
        for (x, y), (ex, ey) in zip(served, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)
            assert x.is_contiguous() and x.dtype == torch.float32


def test_each_window_is_served_once_per_epoch() -> None:
    prepared = _prepared()
    dm = SeriesDataModule(prepared, batch_size=32)
    x_train = torch.tensor(prepared.windows["train"].x, dtype=torch.float32)
    served = [i for x, _ in dm.train_dataloader() for i in _window_ids(x_train, x)]
    assert sorted(served) == list(range(len(x_train)))
    assert served != sorted(served)  # shuffled

    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        windows = prepared.windows[split]
        xs = torch.cat([x for x, _ in loader])
        ys = torch.cat([y for _, y in loader])
        # chronological, every window once, the targets beside their inputs
        np.testing.assert_array_equal(xs.numpy(), windows.x.astype(np.float32))
        np.testing.assert_array_equal(ys.numpy(), windows.y.astype(np.float32))


def test_evaluation_batches_are_large_training_batches_are_as_configured() -> None:
    prepared = _prepared(rows=6000)
    dm = SeriesDataModule(prepared, batch_size=32)
    val = len(prepared.windows["val"])
    assert val > EVAL_BATCH_WINDOWS  # so there is more than one evaluation batch
    sizes = [len(x) for x, _ in dm.val_dataloader()]
    assert sizes[:-1] == [EVAL_BATCH_WINDOWS] * (len(sizes) - 1) and sum(sizes) == val
    assert {len(x) for x, _ in list(dm.train_dataloader())[:-1]} == {32}
    assert SeriesDataModule(prepared, batch_size=4096).eval_batch_size == 4096  # never smaller
    explicit = SeriesDataModule(prepared, batch_size=32, eval_batch_size=100)
    assert len(next(iter(explicit.test_dataloader()))[0]) == 100


def test_workers_serve_the_same_batches() -> None:
    prepared = _prepared()
    in_process = SeriesDataModule(prepared, batch_size=16, shuffle=False)
    workers = SeriesDataModule(prepared, batch_size=16, shuffle=False, num_workers=2)
    loader = workers.val_dataloader()
    assert loader.num_workers == 2 and loader.persistent_workers
    for (x, y), (wx, wy) in zip(in_process.val_dataloader(), loader, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)
    assert SeriesDataModule(prepared, pin_memory=True).train_dataloader().pin_memory


@pytest.mark.parametrize("shuffle", [True, False])
def test_ddp_shards_training_windows_and_counts_evaluation_windows_once(monkeypatch,
                                                                        shuffle) -> None:
    """Two ranks, as torch.distributed would report them: training windows padded to equal
    shards (same number of steps on every rank), evaluation windows split without padding."""
    prepared = _prepared(rows=405)  # odd window counts, so padding would show
    world, served = 2, {}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)
    for rank in range(world):
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None, r=rank: r)
        dm = SeriesDataModule(prepared, batch_size=8, shuffle=shuffle)
        served[rank] = {split: getattr(dm, f"{split}_dataloader")() for split in ("train", "val")}
    x_train = torch.tensor(prepared.windows["train"].x, dtype=torch.float32)
    x_val = torch.tensor(prepared.windows["val"].x, dtype=torch.float32)
    assert len(x_train) % 2 == 1 and len(x_val) % 2 == 1

    train = {r: [i for x, _ in served[r]["train"] for i in _window_ids(x_train, x)] for r in served}
    assert len(train[0]) == len(train[1]) == (len(x_train) + 1) // 2  # padded by one window
    assert set(train[0]) | set(train[1]) == set(range(len(x_train)))

    val = {r: [i for x, _ in served[r]["val"] for i in _window_ids(x_val, x)] for r in served}
    assert sorted(val[0] + val[1]) == list(range(len(x_val)))  # each window once, no padding

    if shuffle:
        # Lightning reseeds each epoch through the loader's batch_sampler.sampler
        from lightning.fabric.utilities.data import _set_sampler_epoch

        again = {}
        for r in served:
            _set_sampler_epoch(served[r]["train"], 1)
            again[r] = [i for x, _ in served[r]["train"] for i in _window_ids(x_train, x)]
        assert again[0] != train[0]
        assert set(again[0]) | set(again[1]) == set(range(len(x_train)))


def test_batches_move_to_a_device_as_a_pair_and_stay_when_already_there() -> None:
    dm = SeriesDataModule(_prepared(), batch_size=8)
    batch = next(iter(dm.val_dataloader()))
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch
    x, y = dm.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert x.device.type == y.device.type == "meta" and x.shape == batch[0].shape


def test_a_single_window_can_still_be_indexed() -> None:
    dataset = dm_module.WindowTensors(_prepared().windows["test"])
    x, y = dataset[3]
    assert x.shape == dataset.x.shape[1:] and torch.equal(y, dataset.y[3])
