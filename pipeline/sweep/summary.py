"""The end of a study, written by the worker that finds no trial still running: the best trial's
params (tags `best.<key>`) and metrics on the parent run, Optuna's optimisation-history and
parameter-importance plots, a CSV of every trial, and the best trial's model logged from its
best checkpoint, registered and offered to champion/challenger promotion like any training.

Registering happens once per best trial even when two workers finish at the same moment: the
right to do it is claimed by creating a marker study `<study>:registered-trial-<n>` in the same
storage, which succeeds for one worker only (the same atomic create that elects the founder).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import yaml

from pipeline.cli import load_config
from pipeline.secrets import redact
from pipeline.sweep.study import StudyHandle
from pipeline.sweep.trials import OVERRIDES_ATTR, RUN_ATTR
from pipeline.tracking.run import RunHandle

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    complete: int
    pruned: int
    failed: int
    best_trial: int | None
    best_value: float | None
    best_params: dict
    best_run_id: str | None
    model_name: str | None = None
    model_version: str | None = None
    promoted: bool | None = None
    promotion_reason: str | None = None


def counts(study) -> dict[str, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return {state: sum(t.state == getattr(TrialState, state.upper()) for t in trials)
            for state in ("complete", "pruned", "fail", "running")}


def summarize(handle: StudyHandle, register: bool = True) -> SweepSummary:
    study, parent = handle.study, handle.parent
    n = counts(study)
    summary = SweepSummary(n["complete"], n["pruned"], n["fail"], None, None, {}, None)
    with tempfile.TemporaryDirectory(prefix="sweep-summary-") as tmp:
        write_summary_files(handle, Path(tmp))
        parent.client.log_artifacts(parent.run_id, tmp)
    if n["complete"] == 0:
        return summary
    best = study.best_trial
    summary.best_trial, summary.best_value, summary.best_params = best.number, best.value, dict(best.params)
    summary.best_run_id = best.user_attrs.get(RUN_ATTR)
    record_best(parent, best)
    if register and summary.best_run_id and claim_registration(handle, best.number):
        register_best(handle, best, summary)
    return summary


def record_best(parent: RunHandle, best) -> None:
    """Best trial's params as tags (params are write-once, and a resumed study's best can change)
    and its run's metrics as the parent's, at step = trial number."""
    client = parent.client
    tags = {"best.trial": str(best.number), "best.value": f"{best.value:.6g}",
            **{f"best.{k}": str(v) for k, v in best.params.items()}}
    run_id = best.user_attrs.get(RUN_ATTR)
    if run_id:
        tags["best.run_id"] = run_id
    for key, value in tags.items():
        client.set_tag(parent.run_id, key, value)
    metrics = client.get_run(run_id).data.metrics if run_id else {}
    batch = [mlflow.entities.Metric(k, v, 0, best.number) for k, v in metrics.items()
             if k.startswith(("val/", "test/"))]
    batch.append(mlflow.entities.Metric("best_value", best.value, 0, best.number))
    client.log_batch(parent.run_id, metrics=batch)


def write_summary_files(handle: StudyHandle, out: Path) -> None:
    study = handle.study
    (out / "sweep").mkdir()
    frame = study.trials_dataframe()
    frame.to_csv(out / "sweep" / "trials.csv", index=False)
    space_text = yaml.safe_dump(redact({"space": handle.space.name, "study": handle.space.study_name,
                                        "base_overrides": list(handle.space.base_overrides),
                                        "params": {p.key: p.describe() for p in handle.space.params}}),
                                sort_keys=False)
    (out / "sweep" / "search_space.yaml").write_text(space_text)
    plot_study(study, out / "plots")


def plot_study(study, out: Path) -> None:
    """Optuna's own matplotlib plots; importance needs two finished trials with some spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = vis.plot_optimization_history(study)
        ax.figure.savefig(out / "optimization_history.png", dpi=100, bbox_inches="tight")
        plt.close(ax.figure)
        try:
            # PED-ANOVA: no scikit-learn needed (fANOVA, the default, fits a random forest).
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            ax = vis.plot_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            log.info("no parameter-importance plot yet: %s", exc)
            return
        ax.figure.savefig(out / "param_importances.png", dpi=100, bbox_inches="tight")
        plt.close(ax.figure)


def claim_registration(handle: StudyHandle, number: int) -> bool:
    import optuna

    try:
        handle.storage_obj.create_new_study([optuna.study.StudyDirection.MINIMIZE],
                                 f"{handle.space.study_name}:registered-trial-{number}")
    except optuna.exceptions.DuplicatedStudyError:
        return False
    return True


def register_best(handle: StudyHandle, best, summary: SweepSummary) -> None:
    """The best trial's network rebuilt from its logged best checkpoint, logged as its run's model,
    registered and offered to promotion (pipeline.training.promote_logged)."""
    import torch

    from pipeline.data.datamodule import build_datamodule
    from pipeline.tracking.publish import publish_model
    from pipeline.training import build_module, promote_logged

    cfg = load_config("train", handle.space.training_overrides(best.user_attrs.get(OVERRIDES_ATTR, [])))
    if not cfg.tracking.register:
        return
    store, run_id = handle.parent.store, summary.best_run_id
    run = store.client.get_run(run_id)
    child = RunHandle(store, run_id, run.info.run_name, run.info.experiment_id, handle.parent.experiment_name)
    dm = build_datamodule(cfg.data)
    module = build_module(cfg, dm.prepared)
    with tempfile.TemporaryDirectory(prefix="sweep-best-") as tmp:
        path = store.client.download_artifacts(run_id, "checkpoints/best.ckpt", tmp)
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    logged = publish_model(child, module.net, dm.prepared, cfg.tracking.registered_model)
    # Logging a model through the fluent API leaves the run RUNNING; the trial had finished.
    store.client.set_terminated(run_id, "FINISHED")
    decision = promote_logged(cfg, child, logged)
    summary.model_name, summary.model_version = logged.name, logged.version
    tags = {"best.model_version": str(logged.version)}
    if decision is not None:
        summary.promoted, summary.promotion_reason = decision.promoted, decision.reason
        tags["best.promoted"] = str(decision.promoted).lower()
    for key, value in tags.items():
        store.client.set_tag(handle.parent.run_id, key, value)
    store.client.set_tag(run_id, "sweep.registered_version", str(logged.version))
