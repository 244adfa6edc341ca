"""The LightningDataModule: chronological split, train-only scaler, sliding windows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.data.fetch import FetchResult, fetch
from pipeline.data.scaling import AffineScaler
from pipeline.data.windowing import (
    SPLITS,
    Windows,
    WindowSpec,
    check_split_lengths,
    make_windows,
    split_bounds,
)
from pipeline.errors import require


@dataclass(frozen=True)
class PreparedData:
    """Scaled windows per split, plus what is needed to undo the scaling and place targets in time."""

    windows: dict[str, Windows]
    bounds: dict[str, tuple[int, int]]
    x_scaler: AffineScaler
    y_scaler: AffineScaler
    inputs: list[str]
    targets: list[str]
    spec: WindowSpec
    frame: pd.DataFrame
    digest: str
    source: str


def prepare_series(
    fetched: FetchResult,
    inputs: list[str],
    targets: list[str],
    spec: WindowSpec,
    fractions: Mapping[str, float],
    scaler: str = "standard",
) -> PreparedData:
    """Split one series chronologically, fit scalers on the train rows only, window each split.

    Windows are cut inside each split, so no sample's inputs or targets cross a boundary.
    """
    frame = fetched.frame
    bounds = split_bounds(len(frame), dict(fractions))
    check_split_lengths(bounds, spec, fetched.source)
    x_raw = frame[inputs].to_numpy(dtype=np.float64)
    y_raw = frame[targets].to_numpy(dtype=np.float64)
    train_start, train_stop = bounds["train"]
    x_scaler = AffineScaler.fit(scaler, x_raw[train_start:train_stop])
    y_scaler = AffineScaler.fit(scaler, y_raw[train_start:train_stop])
    x_all, y_all = x_scaler.transform(x_raw), y_scaler.transform(y_raw)
    windows = {
        name: make_windows(x_all[start:stop], y_all[start:stop], spec, first_row=start)
        for name, (start, stop) in bounds.items()
    }
    return PreparedData(windows=windows, bounds=bounds, x_scaler=x_scaler, y_scaler=y_scaler,
                        inputs=list(inputs), targets=list(targets), spec=spec, frame=frame,
                        digest=fetched.digest, source=fetched.source)


def _tensor_dataset(windows: Windows) -> TensorDataset:
    # Copy the strided views once into contiguous float32 tensors the loader can index fast.
    return TensorDataset(torch.tensor(windows.x, dtype=torch.float32),
                         torch.tensor(windows.y, dtype=torch.float32))


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
        return DataLoader(self._datasets[split], batch_size=self.batch_size, shuffle=shuffle,
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


def build_datamodule(data_cfg: Mapping[str, Any]) -> SeriesDataModule:
    """Config -> fetched, validated, windowed DataModule (the CLI, DAG and tests all call this)."""
    spec = window_spec_from_config(data_cfg)
    fetched = fetch(data_cfg)
    prepared = prepare_series(fetched, list(data_cfg["inputs"]), list(data_cfg["targets"]), spec,
                              data_cfg["split"], data_cfg.get("scaler", "standard"))
    return SeriesDataModule(prepared, batch_size=data_cfg.get("batch_size", 32),
                            num_workers=data_cfg.get("num_workers", 0),
                            pin_memory=bool(data_cfg.get("pin_memory", False)),
                            shuffle=bool(data_cfg.get("shuffle", True)))
