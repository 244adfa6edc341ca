"""DDP trials: one trial = one DDP training, with only global rank zero talking to Optuna and
MLflow. Every rank is started by an external launcher (torchrun; under SLURM, torchrun inside
srun) and runs `python -m pipeline.sweep ...`: rank zero is the study's worker; the others
follow it. For each trial rank zero broadcasts the sampled overrides, every rank composes the
same config and trains it (Lightning joins the process group formed here), and rank zero's
pruning decision reaches every rank through TrialReporter's broadcast. A final None says the
study is over.

Lightning's own launcher (`trainer.devices=2` from a plain `python -m`) starts the other ranks
only inside the first `fit`, after rank zero has sampled: they could not receive the first
trial, so a sweep refuses it (one line) and names torchrun.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from pipeline.errors import ConfigError


def launched_world() -> int:
    """Processes an external launcher started (torchrun sets WORLD_SIZE for every rank)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def check_launch(devices: int, num_nodes: int) -> None:
    if devices * num_nodes > 1 and launched_world() != devices * num_nodes:
        raise ConfigError(f"trainer.devices={devices} x trainer.num_nodes={num_nodes}: DDP trials need every "
                          "rank started up front; run the sweep under torchrun, e.g. torchrun "
                          f"--nproc-per-node {devices} -m pipeline.sweep ... trainer=ddp trainer.devices={devices}")


def _ensure_group() -> None:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        # Lightning finds the group initialised and uses it; CPU objects go over gloo either way.
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")


def share(overrides: Sequence[str] | None) -> list[str] | None:
    """Rank zero's value on every rank (a no-op in one process)."""
    if launched_world() <= 1:
        return None if overrides is None else list(overrides)
    import torch.distributed as dist

    _ensure_group()
    box = [None if overrides is None else list(overrides)]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def follow(space) -> int:
    """Ranks other than zero: train every trial rank zero sends until it sends None; how many."""
    from pipeline.cli import load_config
    from pipeline.sweep.pruning import TrialReporter
    from pipeline.training import train

    trials = 0
    while (sampled := share(None)) is not None:
        try:
            cfg = load_config("train", space.training_overrides(sampled))
        except ConfigError:
            continue  # rank zero refused the same combination and tells the study
        train(cfg, callbacks=[TrialReporter(None, space.config.objective, space.config.direction)])
        trials += 1
    return trials
