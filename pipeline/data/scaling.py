"""Per-column affine scalers, fit on the training part only and stored with the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AffineScaler:
    """scaled = (raw - center) / scale, per column; both standard and min-max scaling are affine."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, kind: str, values: np.ndarray) -> AffineScaler:
        values = np.asarray(values, dtype=np.float64)
        if kind == "standard":
            center, scale = values.mean(axis=0), values.std(axis=0)
        elif kind == "minmax":
            center, scale = values.min(axis=0), values.max(axis=0) - values.min(axis=0)
        else:
            center, scale = np.zeros(values.shape[1]), np.ones(values.shape[1])
        # A constant training column would divide by zero; leave it unscaled instead.
        scale = np.where(scale > 1e-12, scale, 1.0)
        return cls(center=center, scale=scale)

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.center) / self.scale

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.scale + self.center

    def to_dict(self) -> dict:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> AffineScaler:
        return cls(center=np.asarray(data["center"], dtype=np.float64),
                   scale=np.asarray(data["scale"], dtype=np.float64))
