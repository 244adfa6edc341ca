"""Hydra entry point: python -m pipeline.train [overrides]. A short chain of stage functions."""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import CONF_DIR, check_group_choices, exit_on_pipeline_error, quiet_mlflow
from pipeline.errors import TrainingInterrupted


@dataclass
class TrainResult:
    run_id: str
    run_name: str
    experiment: str
    tracking_uri: str
    model_name: str | None
    model_version: str | None
    test_metrics: dict[str, float] = field(default_factory=dict)
    promotion: Any = None


def _quiet_lightning() -> None:
    # Small in-memory datasets: worker processes would cost more than they save.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def build_module(cfg: DictConfig, dm) -> Any:
    from pipeline.models.module import ForecastModule
    from pipeline.models.network import NetworkSpec

    prepared, model_cfg = dm.prepared, cfg.model
    spec = NetworkSpec(
        variant=model_cfg.name, inputs=prepared.inputs, targets=prepared.targets,
        lookback=prepared.spec.lookback, horizon=prepared.spec.horizon, mode=prepared.spec.mode,
        hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers,
        dropout=model_cfg.dropout, bidirectional=model_cfg.bidirectional,
        init_state=model_cfg.get("init_state", "zeros"), task=cfg.data.get("task", "regression"),
        cell=model_cfg.get("cell"),
        x_scaler=prepared.x_scaler.to_dict(), y_scaler=prepared.y_scaler.to_dict(),
    )
    burn_in = cfg.data.get("burn_in", 0) if prepared.spec.mode == "sequence" else 0
    return ForecastModule(spec.to_dict(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                          loss_from_step=burn_in, teacher_forcing=model_cfg.get("teacher_forcing", 0.0),
                          recurrent_l2=model_cfg.get("recurrent_l2", 0.0))


def build_trainer(trainer_cfg: DictConfig, logger, checkpoint_dir: str, extra_callbacks=()):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    # Both are written at the end of the training epoch (after validation), so a resumed run starts
    # the next epoch instead of repeating this one's validation. `last` is its own callback because
    # Lightning's save_last only refreshes when the best checkpoint changes.
    callbacks = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val/loss", mode="min",
                        save_top_k=1, save_on_train_epoch_end=True),
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_top_k=1,
                        save_on_train_epoch_end=True, enable_version_counter=False),
        *extra_callbacks,
    ]
    if trainer_cfg.get("early_stopping_patience"):
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min",
                                       patience=trainer_cfg.early_stopping_patience))
    return L.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.get("num_nodes", 1), strategy=trainer_cfg.get("strategy", "auto"),
        max_epochs=trainer_cfg.max_epochs, precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.get("gradient_clip_val"), logger=logger, callbacks=callbacks,
        log_every_n_steps=trainer_cfg.get("log_every_n_steps", 10),
        enable_progress_bar=trainer_cfg.get("progress_bar", True),
        enable_model_summary=trainer_cfg.get("model_summary", True),
        deterministic=trainer_cfg.get("deterministic", False),
        # The DataModule picks its own samplers under DDP (no padding of evaluation windows).
        use_distributed_sampler=False,
    )


def run_tags(cfg: DictConfig, dm, variant: str) -> dict[str, str]:
    from pipeline.tracking.run import environment_tags

    return {**environment_tags(), "variant": variant, "data": cfg.data.name,
            "data_digest": dm.prepared.digest, "data_source": dm.prepared.source}


@contextmanager
def checkpoint_directory(trainer_cfg: DictConfig) -> Iterator[str]:
    """Checkpoints are staged locally and mirrored to MLflow; a temp dir unless configured
    (multi-node runs need a shared path so every rank can read the best checkpoint)."""
    if trainer_cfg.get("checkpoint_dir"):
        Path(trainer_cfg.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        yield str(trainer_cfg.checkpoint_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            yield tmp


def resume_target(cfg: DictConfig, zero: bool) -> tuple[str | None, str | None]:
    """(checkpoint path, run id) to resume from, or (None, None) for a fresh run."""
    target = cfg.trainer.get("resume")
    if not target:
        return None, None
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.checkpoints import local_resume_path, resolve_resume

    if zero:
        return resolve_resume(str(target), lambda: MlflowClient(tracking_uri=cfg.tracking.uri))
    # Other ranks never talk to MLflow: they read what rank zero resolved and downloaded.
    return local_resume_path(str(target)), None


def start_tracking(cfg: DictConfig, dm, variant: str, config: dict, resume_run: str | None):
    import mlflow

    from pipeline.data.fetch import dataset_for_mlflow
    from pipeline.tracking.run import open_run, reopen_run, run_name_for

    if resume_run:
        return reopen_run(cfg.tracking.uri, resume_run, config)
    handle = open_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.get("artifact_root"),
                      run_name_for(variant, cfg.data.name), run_tags(cfg, dm, variant), config)
    with mlflow.start_run(run_id=handle.run_id):
        # The dataset's content digest names exactly the data this run saw.
        mlflow.log_input(dataset_for_mlflow(dm.prepared), context="training")
    handle.client.update_run(handle.run_id, status="RUNNING")  # leaving start_run() finished it
    return handle


def train(cfg: DictConfig) -> TrainResult | None:
    """fetch -> DataModule -> LightningModule -> Trainer -> evaluate -> log and register.

    Every rank trains; only global rank zero talks to MLflow. Other ranks return None.
    """
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from pipeline.data.datamodule import build_datamodule
    from pipeline.distributed import is_global_zero

    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg.data)  # config and data errors surface here, before any run exists
    module = build_module(cfg, dm)
    config = OmegaConf.to_container(cfg, resolve=True)
    zero = is_global_zero()
    ckpt_path, resume_run = resume_target(cfg, zero)
    # seq2seq runs are named by their cell too (seq2seq-gru), as their model versions are.
    handle = start_tracking(cfg, dm, module.net.spec.label, config, resume_run) if zero else None
    try:
        return fit_test_publish(cfg, dm, module, config, handle, ckpt_path)
    except SIGTERMException:
        run = f"trainer.resume={handle.run_id}" if handle else "trainer.resume=<run id>"
        raise TrainingInterrupted(f"training stopped by SIGTERM; continue it with {run}") from None


def fit_test_publish(cfg: DictConfig, dm, module, config: dict, handle, ckpt_path: str | None):
    from pipeline.distributed import WeightsAgreement
    from pipeline.tracking.checkpoints import MlflowCheckpointMirror
    from pipeline.tracking.logger import BufferedMLFlowLogger
    from pipeline.tracking.run import run_guard

    with run_guard(handle), checkpoint_directory(cfg.trainer) as ckpt_dir:
        run_id = handle.run_id if handle else None
        logger = BufferedMLFlowLogger(experiment_name=cfg.tracking.experiment,
                                      tracking_uri=cfg.tracking.uri, run_id=run_id,
                                      flush_every_s=cfg.tracking.get("flush_every_s", 5.0))
        agreement = WeightsAgreement()
        mirror = MlflowCheckpointMirror(handle.client if handle else None, run_id, ckpt_dir)
        trainer = build_trainer(cfg.trainer, logger, ckpt_dir, [mirror, agreement])
        # weights_only: our checkpoints hold tensors and plain values, never arbitrary objects.
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        best = trainer.checkpoint_callback.best_model_path
        best = best if best and Path(best).exists() else None
        trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)
        if handle is None:
            return None
        return finish_run(cfg, handle, module, dm, config, best, agreement.digests)


def finish_run(cfg: DictConfig, handle, module, dm, config: dict, best: str | None,
               digests: list[str]) -> TrainResult:
    """Rank zero only: artifacts, baselines, model version, promotion."""
    from mlflow.entities import RunTag

    from pipeline.tracking.publish import Evaluation, publish_results

    tags = {"world_size": str(len(digests) or 1),
            "n_params": str(sum(p.numel() for p in module.net.parameters()))}
    if cfg.get("study"):
        tags["study"] = cfg.study
    if digests:
        tags["ddp_weights_digests"] = ",".join(digests)
    handle.client.log_batch(handle.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    evaluation = Evaluation(scored_from=module.hparams.loss_from_step, season=cfg.data.get("season"))
    logged = publish_results(handle, module.net, dm.prepared, config, best,
                             cfg.tracking.registered_model if cfg.tracking.register else None,
                             evaluation)
    decision = maybe_promote(cfg, handle, logged)
    metrics = handle.client.get_run(handle.run_id).data.metrics
    return TrainResult(run_id=handle.run_id, run_name=handle.run_name, experiment=handle.experiment_name,
                       tracking_uri=handle.tracking_uri, model_name=logged.name,
                       model_version=logged.version,
                       test_metrics={k: v for k, v in metrics.items() if k.startswith("test/")},
                       promotion=decision)


def maybe_promote(cfg: DictConfig, handle, logged):
    if not (cfg.promotion.enabled and logged.version):
        return None
    from pipeline.tracking.registry import promote

    return promote(handle.client, logged.name, logged.version, cfg.promotion.metric,
                   cfg.promotion.direction)


def summary_lines(result: TrainResult) -> list[str]:
    metrics = "  ".join(f"{k.removeprefix('test/')}={v:.6g}" for k, v in sorted(result.test_metrics.items()))
    model = (f"{result.model_name} version {result.model_version}" if result.model_version
             else "not registered (tracking.register=false)")
    if result.promotion is not None:
        verdict = "now @champion" if result.promotion.promoted else "not promoted"
        model += f" ({verdict}: {result.promotion.reason})"
    return [
        f"run:     {result.run_name} (id {result.run_id}) in experiment '{result.experiment}'",
        f"model:   {model}",
        f"test:    {metrics}",
        f"store:   {result.tracking_uri}",
        "browse:  make ui   ->  http://127.0.0.1:5000",
    ]


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    quiet_mlflow()
    with exit_on_pipeline_error():
        result = train(cfg)
    if result is None:  # a DDP worker: rank zero reports
        return None
    print("\n".join(summary_lines(result)), flush=True)
    # Returned so Hydra sweepers can optimise it.
    return result.test_metrics.get("test/mse")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    main()
