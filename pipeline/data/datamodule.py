"""The LightningDataModule over prepared windows, and the one call that builds it from a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from pipeline.data.fetch import fetch, plain
from pipeline.data.prepare import PreparedData, prepare_samples, prepare_series
from pipeline.data.windowing import SPLITS, Windows, WindowSpec
from pipeline.errors import require

__all__ = ["PreparedData", "SeriesDataModule", "build_datamodule", "prepare_from_config",
           "prepare_samples", "prepare_series", "window_spec_from_config"]

TASKS = ("regression", "classification")


def _tensor_dataset(windows: Windows) -> TensorDataset:
    # Copy the strided views once into contiguous float32 tensors the loader can index fast.
    return TensorDataset(torch.tensor(windows.x, dtype=torch.float32),
                         torch.tensor(windows.y, dtype=torch.float32))


def _distributed_sampler(dataset: TensorDataset, split: str, shuffle: bool) -> Sampler | None:
    """Under DDP (the Trainer runs with use_distributed_sampler=False): training windows are
    split across ranks with padding, so every rank takes the same number of gradient steps;
    evaluation windows are split without padding, so synced metrics count each window once."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    if torch.distributed.get_world_size() == 1:
        return None
    if split == "train":
        return DistributedSampler(dataset, shuffle=shuffle)
    return UnrepeatedDistributedSampler(dataset, shuffle=False)


class SeriesDataModule(L.LightningDataModule):
    def __init__(self, prepared: PreparedData, batch_size: int = 32, num_workers: int = 0,
                 pin_memory: bool = False, shuffle: bool = True) -> None:
        super().__init__()
        require(isinstance(batch_size, int) and batch_size > 0, "data.batch_size", batch_size,
                "must be a positive integer")
        require(isinstance(num_workers, int) and num_workers >= 0, "data.num_workers", num_workers,
                "must be an integer >= 0")
        self.prepared = prepared
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.shuffle = shuffle
        self._datasets = {name: _tensor_dataset(prepared.windows[name]) for name in SPLITS}

    @property
    def n_inputs(self) -> int:
        return len(self.prepared.inputs)

    @property
    def n_targets(self) -> int:
        return len(self.prepared.targets)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        sampler = _distributed_sampler(self._datasets[split], split, shuffle)
        return DataLoader(self._datasets[split], batch_size=self.batch_size,
                          shuffle=shuffle if sampler is None else False, sampler=sampler,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        # Only training windows are shuffled; evaluation keeps chronological order.
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def window_spec_from_config(data_cfg: Mapping[str, Any]) -> WindowSpec:
    return WindowSpec(lookback=data_cfg["lookback"], horizon=data_cfg.get("horizon", 1),
                      stride=data_cfg.get("stride", 1), mode=data_cfg.get("mode", "forecast"))


def prepare_from_config(data_cfg: Mapping[str, Any]) -> PreparedData:
    """Config -> fetched, validated, split, scaled windows (series or samples layout)."""
    require(data_cfg.get("task", "regression") in TASKS, "data.task", data_cfg.get("task"),
            f"must be one of {', '.join(TASKS)}")
    spec = window_spec_from_config(data_cfg)  # config errors before any fetch
    fetched = fetch(data_cfg)
    prepare = prepare_samples if data_cfg.get("layout", "series") == "samples" else prepare_series
    return prepare(fetched, list(data_cfg["inputs"]), list(data_cfg["targets"]), spec,
                   dict(plain(data_cfg["split"])), data_cfg.get("scaler", "standard"))


def build_datamodule(data_cfg: Mapping[str, Any]) -> SeriesDataModule:
    """Config -> fetched, validated, windowed DataModule (the CLI, DAG and tests all call this)."""
    prepared = prepare_from_config(data_cfg)
    return SeriesDataModule(prepared, batch_size=data_cfg.get("batch_size", 32),
                            num_workers=data_cfg.get("num_workers", 0),
                            pin_memory=bool(data_cfg.get("pin_memory", False)),
                            shuffle=bool(data_cfg.get("shuffle", True)))
