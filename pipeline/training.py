"""One training, as a chain of stage functions on the typed config (pipeline.config):

    fetch -> DataModule -> LightningModule -> Trainer (fit, test) -> evaluate -> publish -> promote

Every rank trains; only global rank zero talks to MLflow and writes files. Called by
`python -m pipeline.train`, retraining, the studies and the tests.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from mlflow.entities import RunTag

from pipeline.callbacks import BestCheckpoint, EarlyStop, LastCheckpoint, ProgressBar
from pipeline.config import TrainConfig, TrainerConfig, as_dict, tracking_store
from pipeline.data.datamodule import SeriesDataModule, build_datamodule
from pipeline.data.prepare import PreparedData
from pipeline.data.universe import UniverseData
from pipeline.distributed import WeightsAgreement, is_global_zero
from pipeline.models.module import ForecastModule
from pipeline.models.network import NetworkSpec
from pipeline.tracking.champion import PromotionDecision, promote_if_better
from pipeline.tracking.checkpoints import (
    MlflowCheckpointMirror,
    checkpoint_directory,
    local_resume_path,
    resolve_resume,
)
from pipeline.tracking.datasets import log_dataset
from pipeline.tracking.logger import BufferedMLFlowLogger
from pipeline.tracking.publish import Evaluation, LoggedModel, publish_results
from pipeline.tracking.publish_universe import publish_universe
from pipeline.tracking.run import (
    RunHandle,
    ends_on_stop,
    environment_tags,
    open_run,
    raise_if_stopped,
    reopen_run,
    run_guard,
    run_name_for,
)
from pipeline.tracking.store import Store

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    run_name: str
    experiment: str
    tracking_uri: str  # credentials stripped: fit for console lines and summaries
    model_name: str | None
    model_version: str | None
    test_metrics: dict[str, float] = field(default_factory=dict)
    promotion: PromotionDecision | None = None
    metric: str = "mse"  # the promotion metric, by which sweeps and retraining rank runs
    # A callback ended the training as not worth finishing (a pruned sweep trial): no test
    # metrics, no artifacts, no model.
    abandoned: bool = False

    @property
    def objective(self) -> float | None:
        return self.test_metrics.get(f"test/{self.metric}")


def _quiet_lightning() -> None:
    # Small in-memory datasets: worker processes would cost more than they save.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def _warn_teacher_forced_intervals(cfg: TrainConfig) -> None:
    # A decoder fed the truth in training learns the spread of one step ahead given the truth;
    # at test it feeds itself, errors compound, and the intervals come out too narrow (the SST
    # study: 64% of the test split inside the nominal 80% interval at teacher_forcing=0.5, 79% at 0).
    if cfg.model.head != "point" and cfg.model.teacher_forcing > 0:
        log.warning("model.head=%s with model.teacher_forcing=%g: intervals learned with teacher "
                    "forcing are too narrow when the model forecasts on its own; set "
                    "model.teacher_forcing=0 for calibrated intervals", cfg.model.head,
                    cfg.model.teacher_forcing)


def _scalers(prepared: PreparedData | UniverseData) -> dict:
    """The spec's scaler fields: one scaler, or one row per series of a universe."""
    if isinstance(prepared, UniverseData):
        return {"x_scaler": {"center": prepared.x_centers.tolist(), "scale": prepared.x_scales.tolist()},
                "y_scaler": {"center": prepared.y_centers.tolist(), "scale": prepared.y_scales.tolist()},
                "series": list(prepared.series)}
    return {"x_scaler": prepared.x_scaler.to_dict(), "y_scaler": prepared.y_scaler.to_dict()}


def network_spec(cfg: TrainConfig, prepared: PreparedData | UniverseData) -> NetworkSpec:
    model = cfg.model
    return NetworkSpec(
        variant=model.name, inputs=prepared.inputs, targets=prepared.targets,
        lookback=prepared.spec.lookback, horizon=prepared.spec.horizon, mode=prepared.spec.mode,
        hidden_size=model.hidden_size, num_layers=model.num_layers, dropout=model.dropout,
        bidirectional=model.bidirectional, init_state=model.init_state, task=cfg.data.task,
        cell=model.cell, head=model.head, quantiles=list(model.quantiles),
        target_transform=cfg.data.target_transform, series_encoding=model.series_encoding,
        series_embedding_dim=model.series_embedding_dim, **_scalers(prepared),
    )


def build_module(cfg: TrainConfig, prepared: PreparedData) -> ForecastModule:
    _warn_teacher_forced_intervals(cfg)
    # Burn-in only applies where every input step has a target (many-to-many windows).
    burn_in = cfg.data.burn_in if prepared.spec.mode == "sequence" else 0
    return ForecastModule(network_spec(cfg, prepared).to_dict(), lr=cfg.optim.lr,
                          weight_decay=cfg.optim.weight_decay, loss_from_step=burn_in,
                          teacher_forcing=cfg.model.teacher_forcing,
                          recurrent_l2=cfg.model.recurrent_l2,
                          gradient_clip_val=cfg.trainer.gradient_clip_val)


def build_trainer(trainer_cfg: TrainerConfig, logger, checkpoint_dir: str, extra_callbacks=()) -> L.Trainer:
    callbacks = [BestCheckpoint(checkpoint_dir),
                 LastCheckpoint(checkpoint_dir, trainer_cfg.last_checkpoint_every_s),
                 *extra_callbacks]
    if trainer_cfg.early_stopping_patience:
        callbacks.append(EarlyStop(trainer_cfg.early_stopping_patience))
    if trainer_cfg.progress_bar:
        callbacks.append(ProgressBar())
    return L.Trainer(
        accelerator=trainer_cfg.accelerator, devices=trainer_cfg.devices,
        num_nodes=trainer_cfg.num_nodes, strategy=trainer_cfg.strategy,
        max_epochs=trainer_cfg.max_epochs, precision=trainer_cfg.precision,
        # No gradient_clip_val: ForecastModule steps its optimizer and clips itself.
        logger=logger, callbacks=callbacks,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        enable_progress_bar=trainer_cfg.progress_bar,
        enable_model_summary=trainer_cfg.model_summary,
        deterministic=trainer_cfg.deterministic,
        # The DataModule picks its own samplers under DDP (no padding of evaluation windows).
        use_distributed_sampler=False,
    )


def run_tags(cfg: TrainConfig, prepared: PreparedData, variant: str) -> dict[str, str]:
    tags = {**environment_tags(), "variant": variant, "data": cfg.data.name,
            "data_digest": prepared.digest, "data_source": prepared.source}
    if cfg.data.params.get("path"):
        tags["data_file"] = str(cfg.data.params["path"])  # which file a csv run read
    if cfg.study:
        tags["study"] = cfg.study
    return tags


def resume_target(cfg: TrainConfig, store: Store | None) -> tuple[str | None, str | None]:
    """(checkpoint path, run id) to resume from, or (None, None) for a fresh run."""
    target = cfg.trainer.resume
    if not target:
        return None, None
    if store is not None:
        return resolve_resume(str(target), store)
    # Other ranks never talk to MLflow: they read what rank zero resolved and downloaded.
    return local_resume_path(str(target)), None


def start_tracking(store: Store, cfg: TrainConfig, prepared: PreparedData, variant: str, config: dict,
                   resume_run: str | None, parent_run_id: str | None = None,
                   tags: dict[str, str] | None = None) -> RunHandle:
    if resume_run:
        return reopen_run(store, resume_run, config)
    handle = open_run(store, cfg.tracking.experiment, run_name_for(variant, cfg.data.name),
                      {**run_tags(cfg, prepared, variant), **(tags or {})}, config,
                      parent_run_id=parent_run_id)
    # The dataset's content digest names exactly the data this run saw. The run exists from
    # here, before run_guard takes it over: a stop in between must not leave it RUNNING.
    with ends_on_stop(handle):
        log_dataset(handle, prepared, context="training")
    return handle


def train(cfg: TrainConfig, *, callbacks: Sequence[L.Callback] = (), parent_run_id: str | None = None,
          tags: dict[str, str] | None = None, log_model: bool = True) -> TrainResult | None:
    """The whole chain for one config. Other ranks than global zero return None.

    For sweeps (pipeline.sweep): extra Trainer `callbacks` (a callback with a true `abandon`
    attribute after fit ends the training there), the run as a child of `parent_run_id` with
    extra `tags`, and `log_model=False` to leave the model to the study's end."""
    _quiet_lightning()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = build_datamodule(cfg.data)  # data errors surface here, before the store is touched
    module = build_module(cfg, dm.prepared)
    # Rank zero checks the store next (creating a new sqlite store under its lock): a store it
    # cannot write fails in seconds, before any run exists or any training starts.
    store = tracking_store(cfg.tracking) if is_global_zero() else None
    if store is not None:
        store.check()
    config = as_dict(cfg)
    ckpt_path, resume_run = resume_target(cfg, store)
    handle = (start_tracking(store, cfg, dm.prepared, module.net.spec.label, config, resume_run,
                             parent_run_id, tags)
              if store is not None else None)
    return fit_test_publish(cfg, dm, module, config, handle, ckpt_path, callbacks=callbacks,
                            log_model=log_model)


def test_checkpoint(trainer: L.Trainer, which: str) -> str | None:
    """The checkpoint the test metrics come from (trainer.test_checkpoint): best or last."""
    callback = trainer.checkpoint_callback if which == "best" else _last_callback(trainer)
    path = callback.best_model_path if which == "best" else callback.last_model_path or callback.best_model_path
    return path if path and Path(path).exists() else None


def _last_callback(trainer: L.Trainer) -> ModelCheckpoint:
    return next(c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint))


def fit_test_publish(cfg: TrainConfig, dm: SeriesDataModule, module: ForecastModule, config: dict,
                     handle: RunHandle | None, ckpt_path: str | None, *,
                     callbacks: Sequence[L.Callback] = (), log_model: bool = True) -> TrainResult | None:
    run_id = handle.run_id if handle else None
    with checkpoint_directory(cfg.trainer.checkpoint_dir, run_id) as ckpt_dir, run_guard(handle, ckpt_dir):
        logger = BufferedMLFlowLogger(handle, flush_every_s=cfg.tracking.flush_every_s, spill_dir=ckpt_dir)
        agreement = WeightsAgreement()
        mirror = MlflowCheckpointMirror(handle, ckpt_dir)
        trainer = build_trainer(cfg.trainer, logger, ckpt_dir, [mirror, agreement, *callbacks])
        raise_if_stopped()  # a SIGTERM in the set-up whose raise was lost (see raise_if_stopped)
        # weights_only: our checkpoints hold tensors and plain values, never arbitrary objects.
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        raise_if_stopped()
        if any(getattr(c, "abandon", False) for c in callbacks):
            # Every rank saw the same decision (the callback's job), so all skip the test together.
            return abandoned_result(cfg, handle) if handle is not None else None
        tested = test_checkpoint(trainer, cfg.trainer.test_checkpoint)
        trainer.test(module, datamodule=dm, ckpt_path=tested, verbose=False, weights_only=True)
        raise_if_stopped()
        if handle is None:
            return None
        best = trainer.checkpoint_callback.best_model_path
        return finish_run(cfg, handle, module, dm.prepared, config,
                          best if best and Path(best).exists() else None, agreement.digests,
                          log_model=log_model)


def abandoned_result(cfg: TrainConfig, handle: RunHandle) -> TrainResult:
    return TrainResult(run_id=handle.run_id, run_name=handle.run_name,
                       experiment=handle.experiment_name, tracking_uri=handle.tracking_uri,
                       model_name=None, model_version=None, metric=cfg.promotion.metric,
                       abandoned=True)


def finish_run(cfg: TrainConfig, handle: RunHandle, module: ForecastModule, prepared: PreparedData,
               config: dict, best: str | None, digests: list[str], log_model: bool = True) -> TrainResult:
    """Rank zero only: artifacts, baselines, model version, promotion."""
    tags = {"world_size": str(len(digests) or 1),
            "n_params": str(sum(p.numel() for p in module.net.parameters()))}
    if digests:
        tags["ddp_weights_digests"] = ",".join(digests)
    handle.client.log_batch(handle.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    evaluation = Evaluation(scored_from=module.hparams.loss_from_step, season=cfg.data.season,
                            task=cfg.data.task)
    registered = cfg.tracking.registered_model if cfg.tracking.register else None
    if isinstance(prepared, UniverseData):
        logged = publish_universe(handle, module.net, prepared, config, best, registered,
                                  log_model=log_model)
    else:
        logged = publish_results(handle, module.net, prepared, config, best, registered,
                                 evaluation, log_model=log_model)
    decision = promote_logged(cfg, handle, logged) if logged is not None else None
    metrics = handle.client.get_run(handle.run_id).data.metrics
    return TrainResult(run_id=handle.run_id, run_name=handle.run_name,
                       experiment=handle.experiment_name, tracking_uri=handle.tracking_uri,
                       model_name=logged.name if logged else None,
                       model_version=logged.version if logged else None,
                       test_metrics={k: v for k, v in metrics.items() if k.startswith("test/")},
                       promotion=decision, metric=cfg.promotion.metric)


def promote_logged(cfg: TrainConfig, handle: RunHandle, logged: LoggedModel) -> PromotionDecision | None:
    """The new version challenges @champion, when promotion is on and a version was registered."""
    if not (cfg.promotion.enabled and logged.version):
        return None
    return promote_if_better(handle.store, logged.name, logged.version, cfg.promotion.metric,
                             cfg.promotion.direction, task=cfg.data.task)


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
