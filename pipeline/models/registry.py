"""One registry of recurrent backbones: variant name -> nn.Module class.

A backbone takes (batch, time, features) and returns (outputs (batch, time, output_size), state),
like torch.nn.LSTM(batch_first=True); it exposes `output_size`, `num_directions` and
`carries_cell_state` (True when the state is (h, c) rather than h).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pipeline.errors import ConfigError, require

BACKBONES: dict[str, type[nn.Module]] = {}


def register_backbone(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def register(cls: type[nn.Module]) -> type[nn.Module]:
        BACKBONES[name] = cls
        return cls

    return register


def build_backbone(variant: str, input_size: int, hidden_size: int, num_layers: int = 1,
                   dropout: float = 0.0, bidirectional: bool = False) -> nn.Module:
    _load_builtin_backbones()
    if variant not in BACKBONES:
        raise ConfigError(f"model.name={variant!r}: unknown variant; choose one of {', '.join(sorted(BACKBONES))}")
    require(isinstance(hidden_size, int) and hidden_size > 0, "model.hidden_size", hidden_size,
            "must be a positive integer")
    require(isinstance(num_layers, int) and num_layers > 0, "model.num_layers", num_layers,
            "must be a positive integer")
    require(isinstance(dropout, int | float) and 0 <= dropout < 1, "model.dropout", dropout,
            "must be in [0, 1)")
    require(isinstance(bidirectional, bool), "model.bidirectional", bidirectional, "must be true or false")
    return BACKBONES[variant](input_size, hidden_size, num_layers=num_layers, dropout=dropout,
                              bidirectional=bidirectional)


def _load_builtin_backbones() -> None:
    from pipeline.models import custom, recurrent  # noqa: F401  (registers on import)
