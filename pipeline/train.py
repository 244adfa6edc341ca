"""Hydra entry point: python -m pipeline.train [overrides]. A short chain of stage functions."""

from __future__ import annotations

import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import check_group_choices, exit_on_pipeline_error

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass
class TrainResult:
    run_id: str
    run_name: str
    experiment: str
    tracking_uri: str
    model_name: str | None
    model_version: str | None
    test_metrics: dict[str, float] = field(default_factory=dict)


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
        x_scaler=prepared.x_scaler.to_dict(), y_scaler=prepared.y_scaler.to_dict(),
    )
    return ForecastModule(spec.to_dict(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                          loss_from_step=cfg.data.get("burn_in", 0) if prepared.spec.mode == "sequence" else 0)


def build_trainer(trainer_cfg: DictConfig, logger, checkpoint_dir: str):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = [ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor="val/loss",
                                 mode="min", save_top_k=1)]
    if trainer_cfg.get("early_stopping_patience"):
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min",
                                       patience=trainer_cfg.early_stopping_patience))
    return L.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices,
        max_epochs=trainer_cfg.max_epochs, precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.get("gradient_clip_val"), logger=logger, callbacks=callbacks,
        log_every_n_steps=trainer_cfg.get("log_every_n_steps", 10),
        enable_progress_bar=trainer_cfg.get("progress_bar", True),
        enable_model_summary=trainer_cfg.get("model_summary", True),
        deterministic=trainer_cfg.get("deterministic", False),
    )


def run_tags(cfg: DictConfig, dm) -> dict[str, str]:
    from pipeline.tracking.run import environment_tags

    return {**environment_tags(), "variant": cfg.model.name, "data": cfg.data.name,
            "data_digest": dm.prepared.digest, "data_source": dm.prepared.source}


def train(cfg: DictConfig) -> TrainResult:
    """fetch -> DataModule -> LightningModule -> Trainer -> evaluate -> log and register."""
    import lightning as L
    from lightning.pytorch.loggers import MLFlowLogger

    from pipeline.data.datamodule import build_datamodule
    from pipeline.tracking.publish import publish_results
    from pipeline.tracking.run import open_run, run_guard, run_name_for

    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg.data)  # config and data errors surface here, before any run exists
    module = build_module(cfg, dm)
    config = OmegaConf.to_container(cfg, resolve=True)
    handle = open_run(cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.get("artifact_root"),
                      run_name_for(cfg.model.name, cfg.data.name), run_tags(cfg, dm), config)
    with run_guard(handle), tempfile.TemporaryDirectory(prefix="ckpt-") as ckpt_dir:
        logger = MLFlowLogger(experiment_name=handle.experiment_name, tracking_uri=handle.tracking_uri,
                              run_id=handle.run_id)
        trainer = build_trainer(cfg.trainer, logger, ckpt_dir)
        trainer.fit(module, datamodule=dm)
        best = trainer.checkpoint_callback.best_model_path
        test_metrics = trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)[0]
        logged = publish_results(handle, module.net, dm.prepared, config, best,
                                 cfg.tracking.registered_model if cfg.tracking.register else None)
    return TrainResult(run_id=handle.run_id, run_name=handle.run_name, experiment=handle.experiment_name,
                       tracking_uri=handle.tracking_uri, model_name=logged.name,
                       model_version=logged.version,
                       test_metrics={k: float(v) for k, v in test_metrics.items()})


def summary_lines(result: TrainResult) -> list[str]:
    metrics = "  ".join(f"{k.removeprefix('test/')}={v:.6g}" for k, v in sorted(result.test_metrics.items()))
    model = (f"{result.model_name} version {result.model_version}" if result.model_version
             else "not registered (tracking.register=false)")
    return [
        f"run:     {result.run_name} (id {result.run_id}) in experiment '{result.experiment}'",
        f"model:   {model}",
        f"test:    {metrics}",
        f"store:   {result.tracking_uri}",
        "browse:  make ui   ->  http://127.0.0.1:5000",
    ]


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    with exit_on_pipeline_error():
        result = train(cfg)
    print("\n".join(summary_lines(result)), flush=True)
    # Returned so Hydra sweepers can optimise it.
    return result.test_metrics.get("test/mse")


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], CONF_DIR)
    main()
