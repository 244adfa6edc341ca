"""Model Registry: champion/challenger promotion on the same test window.

The challenger's run stores its raw test windows (evaluation/test_windows.npz); the current
champion is re-scored on those very windows, so both numbers answer the same question even when
the champion was trained on older data.
"""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError, TrackingError
from pipeline.evaluate import score
from pipeline.models.network import Forecaster

CHAMPION = "champion"
WINDOWS_ARTIFACT = "evaluation/test_windows.npz"
DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True)
class PromotionDecision:
    model_name: str
    version: str
    promoted: bool
    metric: str
    candidate_score: float
    champion_version: str | None
    champion_score: float | None
    reason: str

    def as_tags(self) -> dict[str, str]:
        return {f"promotion.{k}": "" if v is None else str(v) for k, v in asdict(self).items()
                if k not in ("model_name", "version")}


def save_test_windows(path: Path, x_raw: np.ndarray, y_raw: np.ndarray, scored_from: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, x=x_raw.astype(np.float32), y=y_raw.astype(np.float64),
                        scored_from=np.int64(scored_from))
    return path


def load_test_windows(client: MlflowClient, run_id: str) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, WINDOWS_ARTIFACT, tmp)
        with np.load(local) as data:
            return {k: data[k] for k in data.files}


def load_registered_network(name: str, version: str) -> Forecaster:
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    return model.unwrap_python_model().net


def score_on_windows(net: Forecaster, windows: dict[str, np.ndarray], metric: str) -> float | None:
    """The metric of `net` on raw windows, or None if the network cannot read them."""
    x, y, start = windows["x"], windows["y"], int(windows["scored_from"])
    spec = net.spec
    if x.shape[-1] != len(spec.inputs) or y.shape[-1] != len(spec.targets) or x.shape[1] < spec.lookback:
        return None
    pred = net.predict_raw(torch.as_tensor(x[:, -spec.lookback:], dtype=torch.float32)).numpy()
    if pred.shape != y.shape:
        return None
    return score(y[:, start:].reshape(-1), pred[:, start:].reshape(-1))[metric]


def is_better(candidate: float, champion: float, direction: str) -> bool:
    return candidate < champion if direction == "minimize" else candidate > champion


@contextmanager
def promotion_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
    """Serialise promotions of one model on this host: two trainings finishing together must not
    both read the old champion and leave the alias on the worse one.

    The lock lives in the temp dir (not the repo); across hosts, a shared server's alias updates
    are last-writer-wins, which the post-write check in `promote` narrows but cannot close.
    """
    key = hashlib.sha256(f"{tracking_uri}|{model_name}".encode()).hexdigest()[:16]
    lock_dir = Path(tempfile.gettempdir()) / "lstm-pipeline-locks"
    lock_dir.mkdir(exist_ok=True)
    with open(lock_dir / f"promote-{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def current_champion(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def decide(client: MlflowClient, name: str, version: str, metric: str, direction: str) -> PromotionDecision:
    candidate_run = client.get_model_version(name, version).run_id
    windows = load_test_windows(client, candidate_run)
    candidate_score = score_on_windows(load_registered_network(name, version), windows, metric)
    champion = current_champion(client, name)
    common = {"model_name": name, "version": version, "metric": metric,
              "candidate_score": candidate_score, "champion_version": champion}
    if champion is None:
        return PromotionDecision(promoted=True, champion_score=None,
                                 reason="first version: no champion yet", **common)
    if champion == version:
        return PromotionDecision(promoted=False, champion_score=candidate_score,
                                 reason="already the champion", **common)
    champion_score = score_on_windows(load_registered_network(name, champion), windows, metric)
    if champion_score is None:
        return PromotionDecision(promoted=False, champion_score=None,
                                 reason=f"champion v{champion} cannot read these windows (other inputs/targets/horizon)",
                                 **common)
    better = is_better(candidate_score, champion_score, direction)
    verb = "beats" if better else "does not beat"
    return PromotionDecision(promoted=better, champion_score=champion_score,
                             reason=f"{metric} {candidate_score:.6g} {verb} champion v{champion}'s "
                                    f"{champion_score:.6g} on the same test windows", **common)


def promote(client: MlflowClient, name: str, version: str | int, metric: str = "mse",
            direction: str = "minimize") -> PromotionDecision:
    """Move @champion to `version` only if it beats the current champion; record why as tags."""
    if metric not in ("mse", "mae", "rmse", "mape"):
        raise ConfigError(f"promotion.metric={metric!r}: must be one of mse, mae, rmse, mape")
    if direction not in DIRECTIONS:
        raise ConfigError(f"promotion.direction={direction!r}: must be minimize or maximize")
    version = str(version)
    try:
        with promotion_lock(client.tracking_uri, name):
            decision = decide(client, name, version, metric, direction)
            if decision.promoted:
                client.set_registered_model_alias(name, CHAMPION, version)
            for key, value in decision.as_tags().items():
                client.set_model_version_tag(name, version, key, value)
    except MlflowException as exc:
        raise TrackingError(f"promotion of {name} v{version} failed: {exc.message.splitlines()[0]}") from None
    return decision


def latest_version(client: MlflowClient, name: str) -> str:
    versions = client.search_model_versions(f"name='{name}'")
    if not versions:
        raise TrackingError(f"registered model {name!r} has no versions; run `make train` first")
    return str(max(int(v.version) for v in versions))
