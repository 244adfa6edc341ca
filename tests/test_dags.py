"""The Airflow DAG in dags/: it parses without errors or heavy imports, and `airflow dags test`
runs it end to end against a temporary Airflow home and MLflow store.

Airflow lives in its own virtualenv (`make dag-test` creates .venv-airflow and runs this file
there); in an interpreter without it every test here is skipped. Airflow runs in subprocesses
only: importing it would write an airflow.cfg into the user's home and fix its settings for the
whole pytest process.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.champion import (
    CHAMPION,
    load_registered_network,
    load_test_windows,
    score_on_windows,
)
from pipeline.tracking.store import open_store
from tests.conftest import REPO, TINY


def _airflow_version() -> str | None:
    try:
        return version("apache-airflow-core")
    except PackageNotFoundError:
        return None


pytestmark = pytest.mark.skipif(
    _airflow_version() is None,
    reason="Airflow is not installed in this interpreter; `make dag-test` installs it in "
           ".venv-airflow and runs these tests there")

DAG_ID = "lstm_retrain"
DAGS = REPO / "dags"
AIRFLOW = Path(sys.executable).parent / "airflow"

# Run in a fresh interpreter: parse the dags folder as the scheduler does and describe the DAG.
PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag

before = set(sys.modules)
start = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - start
loaded = {m.split(".")[0] for m in set(sys.modules) - before}
dag = bag.dags.get("lstm_retrain")
print(json.dumps({
    "errors": {str(k): str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "seconds": seconds,
    "heavy": sorted(loaded & {"torch", "lightning", "mlflow", "pandas", "pipeline"}),
    "cron": dag.timetable.expression,
    "timezone": str(dag.timetable.timezone),
    "catchup": dag.catchup,
    "max_active_runs": dag.max_active_runs,
    "params": {k: dag.params[k] for k in dag.params.keys()},
    "downstream": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
    "mapped": sorted(t.task_id for t in dag.tasks if type(t).__name__.endswith("MappedOperator")),
    "fetch": {"retries": dag.get_task("fetch").retries,
              "timeout_s": dag.get_task("fetch").execution_timeout.total_seconds()},
}))
"""


def airflow_env(root: Path, **extra: str) -> dict[str, str]:
    """A throwaway Airflow home (sqlite metadata db) that sees only our dags folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_RETRAIN_"))}
    env.update({
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow' / 'airflow.db'}",
        **extra,
    })
    return env


def parse_dags(root: Path, **extra: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PARSE, str(DAGS)], env=airflow_env(root, **extra),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_dags_folder_parses_quickly_without_heavy_imports(tmp_path) -> None:
    parsed = parse_dags(tmp_path)
    assert parsed["errors"] == {}
    assert parsed["dags"] == [DAG_ID]
    assert parsed["heavy"] == [], "the DAG file must import the pipeline inside its tasks only"
    assert parsed["seconds"] < 5
    assert parsed["downstream"] == {"fetch": ["promote", "validate"], "validate": ["train"],
                                    "train": ["evaluate"], "evaluate": ["promote"], "promote": ["forecast"],
                                    "forecast": []}
    assert parsed["mapped"] == ["train"]
    assert parsed["fetch"]["retries"] >= 1 and 0 < parsed["fetch"]["timeout_s"] <= 3600
    assert (parsed["cron"], parsed["timezone"]) == ("30 16 * * 1-5", "Asia/Shanghai")
    assert parsed["catchup"] is False and parsed["max_active_runs"] == 1
    # No path, URI or directory is a param: those come from the workers' environment.
    assert parsed["params"] == {"data": "stock", "variants": ["lstm", "gru", "peephole"], "overrides": []}


def test_schedule_and_defaults_come_from_the_environment(tmp_path) -> None:
    parsed = parse_dags(tmp_path, PIPELINE_RETRAIN_SCHEDULE="0 17 * * 1-5",
                        PIPELINE_RETRAIN_TIMEZONE="UTC", PIPELINE_RETRAIN_DATA="sine",
                        PIPELINE_RETRAIN_VARIANTS="lstm, gru",
                        PIPELINE_RETRAIN_OVERRIDES="trainer.max_epochs=5 'tracking.experiment=a b'")
    assert parsed["errors"] == {}
    assert (parsed["cron"], parsed["timezone"]) == ("0 17 * * 1-5", "UTC")
    # The deployment's overrides are not the trigger's: they stay out of the params.
    assert parsed["params"] == {"data": "sine", "variants": ["lstm", "gru"], "overrides": []}


def _airflow(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(AIRFLOW), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"airflow {args[0]} {args[1]} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.mark.slow
def test_airflow_dags_test_retrains_registers_and_promotes(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The deployment sets paths and the small data through the environment; the trigger only
    # chooses data, variants and hyperparameters.
    deployment = [o for o in TINY if o != "trainer.max_epochs=3"]
    deployment += [f"tracking.artifact_root={tmp_path / 'mlartifacts'}", f"retrain.output_dir={tmp_path / 'out'}"]
    env = airflow_env(tmp_path, MLFLOW_TRACKING_URI=store,
                      PIPELINE_RETRAIN_OVERRIDES=" ".join(shlex.quote(o) for o in deployment))
    conf = {"data": "sine", "variants": ["lstm", "gru"], "overrides": ["trainer.max_epochs=3"]}
    _airflow(["db", "migrate"], env, tmp_path)
    _airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf)], env, tmp_path)

    listed = _airflow(["dags", "list-runs", DAG_ID, "--output", "json"], env, tmp_path)
    runs = json.loads(listed.stdout.strip().splitlines()[-1])  # after any log lines
    assert [r["state"] for r in runs] == ["success"]

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("sine")
    trained = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["variant"] for r in trained) == ["gru", "lstm"]
    assert {r.info.status for r in trained} == {"FINISHED"}
    versions = sorted(str(v.version) for v in client.search_model_versions("name='sine-forecaster'"))
    assert versions == ["1", "2"]

    tracking = open_store(store)
    windows = load_test_windows(tracking, trained[0].info.run_id)
    scores = {v: score_on_windows(load_registered_network(tracking, "sine-forecaster", v), windows, "mse")
              for v in versions}
    champion = str(client.get_model_version_by_alias("sine-forecaster", CHAMPION).version)
    assert champion == min(scores, key=scores.get)

    summary = json.loads((tmp_path / "out" / "retrain_summary.json").read_text())
    assert summary["champion"] == champion and summary["decision"]["promoted"] is True
    assert {c["run_id"] for c in summary["candidates"]} == {r.info.run_id for r in trained}

    # The champion's next forecast of the configured series, beside the summary: a value per
    # step of the last window (a sequence model), by the champion's name and version.
    import pandas as pd

    forecast = pd.read_csv(tmp_path / "out" / "forecast.csv")
    assert len(forecast) == 20 and forecast["cos"].notna().all()  # TINY: data.lookback=20
    assert set(forecast["model"]) == {"sine-forecaster"} and set(forecast["version"].astype(str)) == {champion}


# --- a universe of stock codes: the fetch mapped over chunks of codes -------------------------------


def test_a_universe_stock_deployment_maps_its_fetch_over_chunks_of_codes(tmp_path) -> None:
    parsed = parse_dags(tmp_path, PIPELINE_RETRAIN_DATA="universe_stock")
    assert parsed["errors"] == {} and parsed["heavy"] == []
    assert parsed["downstream"] == {"codes": ["fetch", "fetch_chunk"], "fetch_chunk": ["fetch"],
                                    "fetch": ["promote", "validate"], "validate": ["train"],
                                    "train": ["evaluate"], "evaluate": ["promote"],
                                    "promote": ["forecast"], "forecast": []}
    assert parsed["mapped"] == ["fetch_chunk", "train"]
    assert parsed["params"]["data"] == "universe_stock"


def _universe_env(tmp_path: Path, data: list[str], **extra: str) -> dict[str, str]:
    deployment = [*data, "model.hidden_size=8", "trainer.max_epochs=1", "trainer.progress_bar=false",
                  "trainer.model_summary=false", "retrain.max_mase=null",
                  f"tracking.artifact_root={tmp_path / 'mlartifacts'}",
                  f"retrain.output_dir={tmp_path / 'out'}"]
    return airflow_env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       PIPELINE_RETRAIN_OVERRIDES=" ".join(shlex.quote(o) for o in deployment),
                       **extra)


def _run_dag(tmp_path: Path, env: dict[str, str], conf: dict) -> dict:
    _airflow(["db", "migrate"], env, tmp_path)
    _airflow(["dags", "test", DAG_ID, "--conf", json.dumps(conf)], env, tmp_path)
    listed = _airflow(["dags", "list-runs", DAG_ID, "--output", "json"], env, tmp_path)
    assert [r["state"] for r in json.loads(listed.stdout.strip().splitlines()[-1])] == ["success"]
    return json.loads((tmp_path / "out" / "retrain_summary.json").read_text())


@pytest.mark.slow
def test_a_chunked_dag_retrains_a_stock_universe_from_the_chunks_caches(tmp_path, monkeypatch) -> None:
    # The caches a networked fetch would fill, filled here through the fake pro API; the run is
    # offline (a deployment override), so its chunks read them per code and no task calls out.
    from pipeline.config import source_params
    from pipeline.data.sources import tushare_prices
    from pipeline.data.sources.universe_stock import load_stock_universe
    from tests.test_universe_retrain import CODES, DAYS, ProApi, test_universe_stock

    fake = ProApi()
    reply = test_universe_stock.daily_reply
    monkeypatch.setattr(test_universe_stock, "daily_reply", lambda code, days=DAYS: reply(code, days))
    monkeypatch.setenv("TUSHARE_TOKEN", "fake-token")
    monkeypatch.setattr(tushare_prices, "connect", lambda token, timeout: fake)
    cache_dir = tmp_path / "cache"
    params = source_params("universe_stock", {"api": "pro", "start": "2024-01-01", "codes": CODES[:4]})
    load_stock_universe(params, cache_dir, progress=False)

    data = ["data.params.api=pro", "data.params.start=2024-01-01", "data.lookback=3",
            "data.min_windows=1", "data.offline=true", "data.params.attempts=1"]
    env = _universe_env(tmp_path, data, PIPELINE_RETRAIN_DATA="universe_stock",
                        PIPELINE_RETRAIN_FETCH_CHUNK="2", PIPELINE_DATA_CACHE=str(cache_dir))
    summary = _run_dag(tmp_path, env, {"data": "universe_stock", "variants": ["lstm", "gru"],
                                       "overrides": []})
    assert summary["data"] == "universe_stock" and summary["decision"]["promoted"] is True
    assert sorted(c["variant"] for c in summary["candidates"]) == ["gru", "lstm"]
    # The fifth code (000858.SZ) has no cache: reported, and the four others trained.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["candidates"][0]["run_id"])
    assert run.data.tags["data_digest"] == summary["data_digest"]
    # The champion's forecast of each of the four series it was trained on.
    import pandas as pd

    forecast = pd.read_csv(tmp_path / "out" / "forecast.csv", dtype={"series": str})
    assert sorted(forecast["series"]) == sorted(CODES[:4])


@pytest.mark.slow
def test_a_chunked_dag_runs_other_data_with_no_chunks(tmp_path) -> None:
    data = ["data.params.n_series=8", "data.params.days=200", "data.lookback=10", "data.min_windows=5"]
    env = _universe_env(tmp_path, data, PIPELINE_RETRAIN_FETCH_CHUNK="2")
    summary = _run_dag(tmp_path, env, {"data": "universe_synthetic", "variants": ["lstm"],
                                       "overrides": []})
    assert summary["data"] == "universe_synthetic" and summary["champion"] == "1"
