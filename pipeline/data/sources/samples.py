"""Tasks made of independent samples (layout: samples), not one long series.

Each source returns one row per (sample, step) with a `split` column: these tasks fix their
train/val/test samples themselves, so the chronological split does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data.sources import source

# The toy regression: three numbers in, their sum out.
TOY_TRAIN = ([1, 2, 3], [1, 3, 4], [1, 3, 3], [1, 2, 2])
TOY_TEST = ([1, 2, 4], [1, 3, 5])


def long_frame(values: dict[str, np.ndarray], splits: np.ndarray) -> pd.DataFrame:
    """(samples, steps) arrays per column -> one row per (sample, step), samples in order."""
    n_samples, n_steps = next(iter(values.values())).shape
    frame = pd.DataFrame({
        "sample": np.repeat(np.arange(n_samples), n_steps),
        "step": np.tile(np.arange(n_steps), n_samples),
        "split": np.repeat(splits, n_steps),
    })
    for name, array in values.items():
        frame[name] = array.reshape(-1).astype(np.float64)
    return frame


@source("toy")
def toy_sums(params: Mapping[str, Any]) -> pd.DataFrame:
    """x: the numbers one per step; sum: the running sum, so the last step holds the target.

    A running sum (not the total repeated) keeps every row's value honest: a naive baseline that
    reads the previous row sees the sum so far, never the answer.
    """
    x = np.array(TOY_TRAIN + TOY_TEST, dtype=np.float64)
    splits = np.array(["train"] * len(TOY_TRAIN) + ["test"] * len(TOY_TEST))
    return long_frame({"x": x, "sum": np.cumsum(x, axis=1)}, splits)


@source("binary_add")
def binary_addition(params: Mapping[str, Any]) -> pd.DataFrame:
    """Bits of a, b and a + b, least significant first: one step per bit position.

    Pairs are drawn without replacement as unordered pairs, so a held-out pair is never seen in
    training in either order. Operands stay below 2**(bits-1) so the sum fits in `bits` bits.
    """
    bits = params["bits"]
    counts = {split: params[f"{split}_pairs"] for split in ("train", "val", "test")}
    a, b = _distinct_pairs(bits, sum(counts.values()), np.random.default_rng(params["seed"]))
    splits = np.repeat(list(counts), list(counts.values()))
    return long_frame({"a": _bits(a, bits), "b": _bits(b, bits), "sum": _bits(a + b, bits)}, splits)


def _distinct_pairs(bits: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    operands = 2 ** (bits - 1)
    lower, upper = np.triu_indices(operands)  # every unordered pair {a, b} exactly once
    chosen = rng.choice(len(lower), size=n, replace=False)
    a, b = lower[chosen], upper[chosen]
    swap = rng.random(n) < 0.5  # both operand orders appear in training
    return np.where(swap, b, a), np.where(swap, a, b)


def _bits(values: np.ndarray, bits: int) -> np.ndarray:
    return (values[:, None] >> np.arange(bits)) & 1
