"""The plain torch model users deploy: scalers + backbone + head, rebuilt from a JSON-able spec.

It imports no Lightning or MLflow, so the logged pyfunc model loads it with torch alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from pipeline.models.heads import build_head
from pipeline.models.registry import build_backbone


@dataclass
class NetworkSpec:
    variant: str
    inputs: list[str]
    targets: list[str]
    lookback: int
    horizon: int = 1
    mode: str = "forecast"
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    bidirectional: bool = False
    x_scaler: dict = field(default_factory=dict)
    y_scaler: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> NetworkSpec:
        return cls(**data)


def _affine_buffers(scaler: dict, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    center = torch.tensor(scaler.get("center", [0.0] * width), dtype=torch.float32)
    scale = torch.tensor(scaler.get("scale", [1.0] * width), dtype=torch.float32)
    return center, scale


class Forecaster(nn.Module):
    """forward() works in scaled space (training); predict_raw() takes and returns raw values."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = build_backbone(spec.variant, len(spec.inputs), spec.hidden_size,
                                       spec.num_layers, spec.dropout, spec.bidirectional)
        self.head = build_head(spec.mode, self.backbone.output_size, len(spec.targets), spec.horizon)
        for prefix, scaler, width in (("x", spec.x_scaler, len(spec.inputs)),
                                      ("y", spec.y_scaler, len(spec.targets))):
            center, scale = _affine_buffers(scaler, width)
            self.register_buffer(f"{prefix}_center", center)
            self.register_buffer(f"{prefix}_scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.backbone(x)
        return self.head(outputs, self.backbone.num_directions)

    def unscale_y(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_scale + self.y_center

    @torch.no_grad()
    def predict_raw(self, x_raw: torch.Tensor) -> torch.Tensor:
        """(batch, lookback, inputs) raw values -> (batch, steps, targets) raw-scale predictions."""
        x = (x_raw - self.x_center) / self.x_scale
        return self.unscale_y(self(x))
