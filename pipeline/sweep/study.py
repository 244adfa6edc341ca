"""The study and its MLflow parent run: created once, joined by every other worker.

Who creates them is decided by the storage itself: `create_study(load_if_exists=False)` succeeds
for exactly one worker (a journal append or a database row with a unique name), and that worker
records the parent run's id, the space digest and the store in one study attribute. A worker
that finds the study waits for that attribute, checks that its space is the same study's
(objective, direction, parameters, base training) and joins the parent run. A study name
reused with another direction or space is refused before anything is written.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError, TrackingError
from pipeline.sweep.space import SearchSpace
from pipeline.sweep.storage import public_name
from pipeline.tracking.run import RunHandle, environment_tags, open_run
from pipeline.tracking.store import Store

STUDY_ATTR = "pipeline"  # one attribute, written once, so a joiner never sees half of it
PARENT_WAIT_S = 30.0
PARENT_ROLE_TAG = "sweep.role"


@dataclass
class StudyHandle:
    study: Any  # optuna.Study
    parent: RunHandle
    space: SearchSpace
    base: TrainConfig
    storage: str  # as given: credentials included, never logged
    founder: bool  # this worker created the study (its sampler seed is the configured one)
    storage_obj: Any = None  # the opened Optuna storage (summary.py claims registration in it)


def build_sampler(space: SearchSpace, founder: bool):
    import optuna

    cfg = space.config.sampler
    seed = cfg.seed
    if seed is not None and not founder:
        # Same seed in every worker = the same random start-up trials in each; a joiner varies it.
        seed = seed + 1 + os.getpid() % 100_003
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: a running trial counts as a bad result, so parallel workers spread out.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.n_startup_trials, constant_liar=True)


def build_pruner(space: SearchSpace):
    import optuna

    cfg = space.config.pruner
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                           n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource,
                                                      reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


def describe_sampler(space: SearchSpace) -> str:
    cfg = space.config.sampler
    return f"{cfg.name}(seed={cfg.seed}" + (f", n_startup_trials={cfg.n_startup_trials})"
                                            if cfg.name == "tpe" else ")")


def describe_pruner(space: SearchSpace) -> str:
    cfg = space.config.pruner
    if cfg.name == "median":
        return f"median(n_startup_trials={cfg.n_startup_trials}, n_warmup_steps={cfg.n_warmup_steps})"
    if cfg.name == "successive_halving":
        return f"successive_halving(min_resource={cfg.min_resource}, reduction_factor={cfg.reduction_factor})"
    return "none"


def find_study(storage_obj, name: str):
    """The study named `name` in the storage, or None (nothing is created)."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage_obj)
    except KeyError:
        return None


def check_joinable(study, space: SearchSpace, store: Store) -> dict[str, Any]:
    """The study's record, once it is complete; refuses a study this space does not belong to."""
    record = wait_for_record(study)
    direction = study.direction.name.lower()
    where = f"study {space.study_name!r}"
    if direction != space.config.direction:
        raise ConfigError(f"{where} already exists with direction {direction}, not "
                          f"{space.config.direction}; choose another hparams_search.study_name")
    if record.get("space_digest") != space.digest():
        raise ConfigError(f"{where} already exists with another search space (digest "
                          f"{record.get('space_digest')}, this one {space.digest()}: objective, params "
                          "or base overrides differ); choose another hparams_search.study_name")
    if record.get("store") != store.public_uri:
        raise ConfigError(f"{where} records its runs in {record.get('store')}, not {store.public_uri}; "
                          "point tracking.uri there or choose another hparams_search.study_name")
    return record


def wait_for_record(study, timeout_s: float = PARENT_WAIT_S) -> dict[str, Any]:
    """The founder writes the record right after creating the study: a joiner that arrives in
    between waits for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = study.user_attrs.get(STUDY_ATTR)
        if record:
            return record
        if time.monotonic() > deadline:
            raise TrackingError(f"study {study.study_name!r} has no parent run recorded (its first "
                                "worker stopped while creating it?); choose another hparams_search.study_name")
        time.sleep(0.5)  # user_attrs reads the storage afresh each time


def open_study(space: SearchSpace, base: TrainConfig, storage_obj, storage: str, store: Store) -> StudyHandle:
    """Join the study (checked first) or create it with its parent run."""
    import optuna

    existing = find_study(storage_obj, space.study_name)
    if existing is None:
        parent = create_parent(space, base, storage, store)
        try:
            study = optuna.create_study(storage=storage_obj, study_name=space.study_name,
                                        direction=space.config.direction,
                                        sampler=build_sampler(space, founder=True),
                                        pruner=build_pruner(space), load_if_exists=False)
        except optuna.exceptions.DuplicatedStudyError:
            # Another worker created it since we looked: ours is not the parent; theirs is.
            store.client.delete_run(parent.run_id)
        else:
            study.set_user_attr(STUDY_ATTR, {"parent_run_id": parent.run_id, "space_digest": space.digest(),
                                             "store": store.public_uri, "experiment": parent.experiment_name,
                                             "objective": space.config.objective})
            return StudyHandle(study, parent, space, base, storage, founder=True, storage_obj=storage_obj)
        existing = find_study(storage_obj, space.study_name)
    record = check_joinable(existing, space, store)
    study = optuna.load_study(study_name=space.study_name, storage=storage_obj,
                              sampler=build_sampler(space, founder=False), pruner=build_pruner(space))
    return StudyHandle(study, join_parent(store, record["parent_run_id"]), space, base, storage,
                       founder=False, storage_obj=storage_obj)


def parent_tags(space: SearchSpace, storage: str) -> dict[str, str]:
    return {**environment_tags(), PARENT_ROLE_TAG: "parent", "sweep.study": space.study_name,
            "sweep.search_space": space.name, "sweep.space_digest": space.digest(),
            "sweep.objective": space.config.objective, "sweep.direction": space.config.direction,
            "sweep.sampler": describe_sampler(space), "sweep.pruner": describe_pruner(space),
            "sweep.storage": public_name(storage), "sweep.n_trials": str(space.config.n_trials)}


def parent_params(space: SearchSpace) -> dict[str, Any]:
    """The parent's params: the space itself (MLflow params are write-once; the best trial's
    values, which a resumed study may change, are tags)."""
    return {"space": {p.key: p.describe() for p in space.params},
            "objective": space.config.objective, "direction": space.config.direction,
            "base_overrides": " ".join(space.base_overrides) or "(none)"}


def create_parent(space: SearchSpace, base: TrainConfig, storage: str, store: Store) -> RunHandle:
    return open_run(store, base.tracking.experiment, f"sweep-{space.study_name}",
                    parent_tags(space, storage), parent_params(space))


def join_parent(store: Store, run_id: str) -> RunHandle:
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(run_id)
        experiment = store.client.get_experiment(run.info.experiment_id)
    except MlflowException:
        raise TrackingError(f"the study's parent run {run_id} is not in {store.public_uri} (deleted?); "
                            "choose another hparams_search.study_name") from None
    if run.info.status != "RUNNING":
        store.client.update_run(run_id, status="RUNNING")  # a resumed study is running again
    return RunHandle(store, run_id, run.info.run_name, experiment.experiment_id, experiment.name)
