"""Champion/challenger: @champion moves to a new version only if it beats the current champion
on the same test windows.

The challenger's run stores its raw test windows (evaluation/test_windows.npz); the current
champion is re-scored on those very windows, so both numbers answer the same question even when
the champion was trained on older data. Which metric names a task may use is the config's rule
(pipeline.config); here a metric is whatever pipeline.evaluate.score returns for the task.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException

from pipeline.config import PROBABILISTIC_METRICS
from pipeline.errors import ConfigError, TrackingError
from pipeline.evaluate import interval_scores_on_windows, score
from pipeline.models.network import Forecaster
from pipeline.tracking.pyfunc import load_registered_network
from pipeline.tracking.store import Store

CHAMPION = "champion"
WINDOWS_ARTIFACT = "evaluation/test_windows.npz"
DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class PromotionDecision:
    model_name: str
    version: str
    promoted: bool
    metric: str
    candidate_score: float | None  # None: the candidate cannot be scored (never promoted)
    champion_version: str | None
    champion_score: float | None
    reason: str

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": "" if v is None else str(v) for k, v in asdict(self).items()
                if k not in ("model_name", "version")}


def save_test_windows(path: Path, x_raw: np.ndarray, y_raw: np.ndarray, scored_from: int,
                      series: np.ndarray | None = None) -> Path:
    """Raw test windows (and, for a universe, each window's series code) for re-scoring."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if series is None else {"series": np.asarray(series, dtype=str)}
    np.savez_compressed(path, x=x_raw.astype(np.float32), y=y_raw.astype(np.float64),
                        scored_from=np.int64(scored_from), **extra)
    return path


def load_test_windows(store: Store, run_id: str) -> dict[str, np.ndarray]:
    """The raw test windows a run saved (save_test_windows), from the run's store."""
    with tempfile.TemporaryDirectory() as tmp:
        local = store.client.download_artifacts(run_id, WINDOWS_ARTIFACT, tmp)
        with np.load(local) as data:
            return {k: data[k] for k in data.files}


def score_on_windows(net: Forecaster, windows: dict[str, np.ndarray], metric: str,
                     task: str = "regression") -> float | None:
    """The metric of `net` on raw windows, or None when it cannot be had: the network cannot
    read the windows (other inputs, targets or horizon), or the metric is undefined on them
    (e.g. mape on targets that are not strictly positive)."""
    x, y, start = windows["x"], windows["y"], int(windows["scored_from"])
    spec = net.spec
    if x.shape[-1] != len(spec.inputs) or y.shape[-1] != len(spec.targets) or x.shape[1] < spec.lookback:
        return None
    series = _series_ids(net, windows.get("series"))
    if series is False:
        return None
    pred = net.predict_raw(torch.as_tensor(x[:, -spec.lookback:], dtype=torch.float32),
                           series).numpy()
    if pred.shape != y.shape:
        return None
    if metric in PROBABILISTIC_METRICS:
        # Interval scores need the quantiles: a point-head version has none and cannot be ranked.
        value = interval_scores_on_windows(net, x[:, -spec.lookback:], y, start,
                                           series).get(metric)
    else:
        value = score(y[:, start:], pred[:, start:], task).get(metric)
    return None if value is None or not np.isfinite(value) else float(value)


def _series_ids(net: Forecaster, codes: np.ndarray | None) -> torch.Tensor | None | bool:
    """The windows' series ids for a universe model; None for a one-series model on one-series
    windows; False when the two do not match (a universe's windows, a series the model lacks)."""
    if (codes is None) != (not net.spec.is_universe):
        return False
    if codes is None:
        return None
    try:
        return net.series_ids([str(c) for c in codes])
    except KeyError:
        return False


def is_better(candidate: float, champion: float, direction: str) -> bool:
    return candidate < champion if direction == "minimize" else candidate > champion


def current_champion(client, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def decide(store: Store, name: str, version: str, metric: str, direction: str,
           task: str = "regression") -> PromotionDecision:
    """Read the champion, score both on the candidate's windows, and say what should happen."""
    client = store.client
    windows = load_test_windows(store, client.get_model_version(name, version).run_id)
    candidate_score = score_on_windows(load_registered_network(store, name, version), windows,
                                       metric, task)
    champion = current_champion(client, name)
    common = {"model_name": name, "version": version, "metric": metric,
              "candidate_score": candidate_score, "champion_version": champion}
    if candidate_score is None:
        return PromotionDecision(promoted=False, champion_score=None, reason=(
            f"v{version} cannot be scored by {metric} on its own test windows (the metric is "
            "undefined there, or the network cannot read them): never promoted"), **common)
    if champion is None:
        return PromotionDecision(promoted=True, champion_score=None,
                                 reason="first version: no champion yet", **common)
    if champion == version:
        return PromotionDecision(promoted=False, champion_score=candidate_score,
                                 reason="already the champion", **common)
    champion_score = score_on_windows(load_registered_network(store, name, champion), windows,
                                      metric, task)
    if champion_score is None:
        return PromotionDecision(promoted=False, champion_score=None, reason=(
            f"champion v{champion} cannot be scored by {metric} on these windows (other "
            "inputs/targets/horizon): promote by hand if the task changed"), **common)
    better = is_better(candidate_score, champion_score, direction)
    verb = "beats" if better else "does not beat"
    return PromotionDecision(promoted=better, champion_score=champion_score,
                             reason=f"{metric} {candidate_score:.6g} {verb} champion v{champion}'s "
                                    f"{champion_score:.6g} on the same test windows", **common)


def promote_if_better(store: Store, name: str, version: str | int, metric: str = "mse",
                      direction: str = "minimize", task: str = "regression") -> PromotionDecision:
    """Move @champion to `version` only if it beats the current champion; record why as tags.

    Promotions of one model in one store are serialised by a lock (Store.lock) from reading the
    champion to moving the alias, among the processes of this user on this machine: two
    trainings finishing together cannot both read the old champion and leave the alias on the
    worse one. Processes on other machines sharing a tracking server are not covered; there the
    alias update is MLflow's last-writer-wins.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"promotion.direction={direction!r}: must be minimize or maximize")
    version = str(version)
    try:
        with store.lock(f"promote:{name}", f"promotion of {name} v{version}"):
            decision = decide(store, name, version, metric, direction, task)
            if decision.promoted:
                store.client.set_registered_model_alias(name, CHAMPION, version)
            for key, value in decision.as_tags().items():
                store.client.set_model_version_tag(name, version, key, value)
    except MlflowException as exc:
        raise TrackingError(f"promotion of {name} v{version} in {store.public_uri} failed: "
                            f"{exc.message.splitlines()[0]}") from None
    return decision


def latest_version(client, name: str) -> str:
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise TrackingError(f"registered model {name!r} has no versions; run `make train` first")
    return str(max(int(v.version) for v in versions))
