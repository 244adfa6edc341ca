"""Backbones cuDNN/oneDNN do not provide, on our fused kernels (pipeline/models/fused_lstm.py)."""

from __future__ import annotations

from pipeline.models.fused_lstm import CoupledLSTM, PeepholeLSTM


class _FusedBackboneMixin:
    carries_cell_state = True  # num_directions and output_size come from the fused modules


class PeepholeBackbone(_FusedBackboneMixin, PeepholeLSTM):
    """Gers & Schmidhuber (2000): gates also read the cell state through diagonal weights."""


class CoupledBackbone(_FusedBackboneMixin, CoupledLSTM):
    """Coupled input-forget gate (CIFG): input gate = 1 - forget gate."""
