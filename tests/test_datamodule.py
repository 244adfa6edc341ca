import numpy as np
import pandas as pd
import pytest

from pipeline.data.datamodule import SeriesDataModule, prepare_series
from pipeline.data.digest import frame_digest
from pipeline.data.loading import FetchResult
from pipeline.data.scaling import AffineScaler
from pipeline.data.windowing import WindowSpec

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _fetched(values: np.ndarray) -> FetchResult:
    frame = pd.DataFrame({"a": values, "b": values * 2}, index=pd.RangeIndex(len(values), name="t"))
    return FetchResult(frame=frame, digest=frame_digest(frame), source="unit")


def test_scaler_never_sees_validation_or_test_rows() -> None:
    base = np.linspace(0, 1, 100)
    spiked = base.copy()
    spiked[60:] = 1e6  # val and test rows changed wildly
    spec = WindowSpec(lookback=5, mode="forecast")
    a = prepare_series(_fetched(base), ["a"], ["b"], spec, FRACTIONS)
    b = prepare_series(_fetched(spiked), ["a"], ["b"], spec, FRACTIONS)
    np.testing.assert_allclose(a.x_scaler.center, b.x_scaler.center)
    np.testing.assert_allclose(a.y_scaler.scale, b.y_scaler.scale)
    np.testing.assert_allclose(a.x_scaler.center, [base[:60].mean()])


def test_train_windows_are_standardised_on_train_rows() -> None:
    prepared = prepare_series(_fetched(np.random.default_rng(0).normal(5, 3, 500)), ["a"], ["b"],
                              WindowSpec(lookback=1, mode="sequence"), FRACTIONS)
    train_x = prepared.windows["train"].x.reshape(-1)
    assert abs(train_x.mean()) < 1e-9 and abs(train_x.std() - 1) < 1e-9


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_scaler_round_trip(kind: str) -> None:
    values = np.random.default_rng(1).normal(size=(50, 3)) * [1, 10, 100]
    scaler = AffineScaler.fit(kind, values)
    np.testing.assert_allclose(scaler.inverse(scaler.transform(values)), values)
    np.testing.assert_allclose(AffineScaler.from_dict(scaler.to_dict()).transform(values),
                               scaler.transform(values))


def test_only_training_loader_shuffles() -> None:
    prepared = prepare_series(_fetched(np.arange(300.0)), ["a"], ["b"], WindowSpec(lookback=4),
                              FRACTIONS)
    dm = SeriesDataModule(prepared, batch_size=16)
    first_val = next(iter(dm.val_dataloader()))[0][:, 0, 0]
    assert (first_val.diff() > 0).all()  # chronological
    import torch

    torch.manual_seed(0)
    first_train = next(iter(dm.train_dataloader()))[0][:, 0, 0]
    assert not (first_train.diff() > 0).all()
