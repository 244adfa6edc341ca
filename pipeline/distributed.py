"""What multi-process training needs from us: who is rank zero, and proof ranks agree."""

from __future__ import annotations

import hashlib
import os

import lightning as L
import torch

# Set by Lightning's launcher (LOCAL_RANK, NODE_RANK), torchrun (RANK, GROUP_RANK) or SLURM.
_RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def is_global_zero() -> bool:
    """Whether this process is global rank zero, known before the Trainer exists.

    A process is rank zero only if every launcher's rank variable is 0 or unset: with
    Lightning's launcher the first process of node 1 has no LOCAL_RANK but NODE_RANK=1.
    """
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in _RANK_VARIABLES)


def weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class WeightsAgreement(L.Callback):
    """After fit, every rank hashes its weights and rank zero records them all.

    DDP keeps replicas identical by construction; this makes it checkable in the MLflow run
    (tag `ddp_weights_digests`) instead of taken on faith.
    """

    def __init__(self) -> None:
        self.digests: list[str] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = weights_digest(pl_module)
        as_ints = torch.tensor([int(digest[i:i + 4], 16) for i in range(0, 16, 4)],
                               device=pl_module.device)
        gathered = trainer.strategy.all_gather(as_ints).reshape(-1, 4).cpu()
        self.digests = ["".join(f"{int(v):04x}" for v in row) for row in gathered]
