"""The LightningDataModule over prepared windows, and the one call that builds it from a config."""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from pipeline.config import DataConfig
from pipeline.data.loading import load_data
from pipeline.data.prepare import PreparedData, prepare_samples, prepare_series
from pipeline.data.universe import UniverseData, UniverseWindows
from pipeline.data.universe_loading import prepare_universe_data
from pipeline.data.windowing import SPLITS, Windows, WindowSpec


class WindowTensors(Dataset):
    """One split's windows as two contiguous float32 tensors, served a whole batch at a time.

    The loader hands `__getitems__` the batch's window indices (torch's batched-fetch protocol),
    so a batch is one gather per tensor. A per-item dataset costs a lookup per window and a
    collate that stacks them: on the default model that was a tenth of each training step.
    """

    def __init__(self, windows: Windows) -> None:
        # Copy the strided views once into contiguous tensors that gathers can read fast.
        self.x = torch.tensor(windows.x, dtype=torch.float32)
        self.y = torch.tensor(windows.y, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.as_tensor(indices, dtype=torch.long)
        return self.x.index_select(0, rows), self.y.index_select(0, rows)


class UniverseBatches(Dataset):
    """One split of a universe, served as (x, y, series ids) batches gathered from its rows.

    The split's rows are held once (torch views of UniverseWindows' arrays, no copy); a batch
    gathers start + arange(span) rows per window, so no window is ever materialised and memory
    stays that of the rows, whatever the lookback and however many epochs run.
    """

    def __init__(self, windows: UniverseWindows) -> None:
        self.x_values = torch.from_numpy(windows.x_values)
        self.y_values = torch.from_numpy(windows.y_values)
        self.starts = torch.from_numpy(windows.starts)
        self.series_ids = torch.from_numpy(windows.series_ids.astype(np.int64))
        self.input_steps = torch.arange(windows.spec.lookback)
        self.target_steps = torch.from_numpy(windows.target_offsets)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, series = self.__getitems__([index])
        return x[0], y[0], series[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        windows = torch.as_tensor(indices, dtype=torch.long)
        starts = self.starts.index_select(0, windows)[:, None]
        return (self.x_values[starts + self.input_steps], self.y_values[starts + self.target_steps],
                self.series_ids.index_select(0, windows))


def split_dataset(windows: Windows | UniverseWindows) -> Dataset:
    return UniverseBatches(windows) if isinstance(windows, UniverseWindows) else WindowTensors(windows)


def whole_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The loader's collate: `__getitems__` already returned the batch (module level, so worker
    processes can unpickle it)."""
    return batch


def _window_sampler(dataset: WindowTensors, split: str, shuffle: bool) -> Sampler:
    """Which windows this process reads, in which order.

    Under DDP (the Trainer runs with use_distributed_sampler=False): training windows are split
    across ranks with padding, so every rank takes the same number of gradient steps; evaluation
    windows are split without padding, so synced metrics count each window once. The shuffle
    seed is Lightning's (seed_everything sets PL_GLOBAL_SEED on every rank), as in the sampler
    Lightning would inject itself. In one process: torch's samplers, drawing from the generator
    seed_everything seeded, so batches come in the order a shuffled DataLoader would give.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and torch.distributed.get_world_size() > 1:
        if split == "train":
            return DistributedSampler(dataset, shuffle=shuffle,
                                      seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return RandomSampler(dataset) if shuffle else SequentialSampler(dataset)


# Evaluation has no gradient to average, so its batches are as large as this (or the training
# batch, if larger): each batch is a trip through Lightning's evaluation loop, which costs more
# than a small model's forward pass (benchmarks/results/training_loop_cpu.md). The same size as
# pipeline.evaluate.predict_windows uses.
EVAL_BATCH_WINDOWS = 1024


class SeriesDataModule(L.LightningDataModule):
    """Loaders over the prepared windows: training batches of `batch_size` windows (shuffled if
    `shuffle`), evaluation batches of `eval_batch_size` windows in chronological order (default:
    EVAL_BATCH_WINDOWS, or `batch_size` if that is larger)."""

    def __init__(self, prepared: PreparedData | UniverseData, batch_size: int = 32, num_workers: int = 0,
                 pin_memory: bool = False, shuffle: bool = True,
                 eval_batch_size: int | None = None) -> None:
        super().__init__()
        self.prepared = prepared
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or max(batch_size, EVAL_BATCH_WINDOWS)
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self._datasets = {name: split_dataset(prepared.windows[name]) for name in SPLITS}

    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        dataset = self._datasets[split]
        # A stock BatchSampler: Lightning reseeds its .sampler each epoch (set_epoch) and knows
        # how to wrap it for predict; the last batch is kept, as a DataLoader's would be.
        batches = BatchSampler(_window_sampler(dataset, split, shuffle), batch_size,
                               drop_last=False)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=whole_batch,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        # Only training windows are shuffled; evaluation keeps chronological order.
        return self._loader("train", self.shuffle, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False, self.eval_batch_size)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Our batches are tuples of tensors, (x, y) or (x, y, series ids): moved as such, and
        not at all when they are on the device already (CPU training), instead of Lightning's
        walk over any collection."""
        device = torch.device(device)
        if all(t.device == device for t in batch):
            return batch
        # As Lightning's own move: asynchronous copies except where they are unsafe (mps).
        non_blocking = device.type not in ("cpu", "mps")
        return tuple(t.to(device, non_blocking=non_blocking) for t in batch)


def window_spec(data: DataConfig) -> WindowSpec:
    return WindowSpec(lookback=data.lookback, horizon=data.horizon, stride=data.stride, mode=data.mode)


def prepare_data(data: DataConfig) -> PreparedData | UniverseData:
    """Config -> fetched, validated, split, scaled windows (series, samples or universe layout)."""
    if data.layout == "universe":
        return prepare_universe_data(data, window_spec(data))
    fetched = load_data(data)
    split = {k: v for k, v in vars(data.split).items()}
    if data.layout == "samples":
        return prepare_samples(fetched, list(data.inputs), list(data.targets), window_spec(data),
                               split, data.scaler)
    return prepare_series(fetched, list(data.inputs), list(data.targets), window_spec(data), split,
                          data.scaler, data.target_transform)


def build_datamodule(data: DataConfig) -> SeriesDataModule:
    """Config -> fetched, validated, windowed DataModule (the CLI, DAG and tests all call this)."""
    return SeriesDataModule(prepare_data(data), batch_size=data.batch_size,
                            num_workers=data.num_workers, pin_memory=data.pin_memory,
                            shuffle=data.shuffle)
