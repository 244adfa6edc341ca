"""Training against a real `mlflow server` process, and failing fast without one."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import TINY, free_port, run_cli

pytestmark = pytest.mark.slow
PASSWORD = "pw-5f3a9c1e77"
TOKEN = "tok-4f9c2e7d1a"  # a fake TUSHARE_TOKEN, planted as the `study` tag too


def _files_holding(root, secrets: tuple[str, ...]) -> list[str]:
    return [f"{path}: {s}" for path in root.rglob("*") if path.is_file()
            for s in secrets if s.encode() in path.read_bytes()]


def test_training_against_a_real_server_logs_run_artifacts_version_and_alias(tmp_path, mlflow_server) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # Credentials in the URI (the server ignores them) and a token planted through the
    # environment and an override reach no param, tag, stored byte or console line.
    with_credentials = mlflow_server.replace("http://", f"http://alice:{PASSWORD}@")
    done = run_cli([*TINY, "tracking=server", f"tracking.uri={with_credentials}", f"study={TOKEN}"],
                   cwd=work, env_extra={"XDG_STATE_HOME": str(tmp_path / "state"), "TUSHARE_TOKEN": TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    # nothing written locally: artifacts went through the server
    assert list(work.iterdir()) == []
    assert PASSWORD not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    # the server's folder holds its sqlite store and every artifact of the run
    assert _files_holding(tmp_path / "server", (PASSWORD, TOKEN)) == []
    assert f"store:   {mlflow_server.replace('http://', 'http://***@')}" in done.stdout

    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("sine").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == mlflow_server.replace("http://", "http://***@")
    assert not any(PASSWORD in v for v in (*run.data.params.values(), *run.data.tags.values()))
    assert run.data.tags["study"] == "<redacted>"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/loss_curve.png", "plots/forecast.png"}
    champion = client.get_model_version_by_alias("sine-forecaster", "champion")
    assert str(champion.version) == "1" and champion.run_id == run.info.run_id
    assert champion.tags["promotion.promoted"] == "True"

    # the champion serves from the shell, raw values in, raw-scale values out
    example = pd.DataFrame({"sin": [0.0] * 20})
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"dataframe_split": example.to_dict(orient="split")}))
    served = run_cli(["models", "predict", "-m", "models:/sine-forecaster@champion", "-i",
                      str(request), "-t", "json", "--env-manager", "local"],
                     cwd=work, module="mlflow", env_extra={"MLFLOW_TRACKING_URI": mlflow_server})
    assert served.returncode == 0, served.stderr[-2000:]
    predictions = json.loads(served.stdout.strip().splitlines()[-1])["predictions"]
    assert len(predictions) == 20 and {"step", "cos"} <= set(predictions[0])


def test_unreachable_server_fails_before_training_with_one_line(tmp_path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    done = run_cli([*TINY, "tracking=server", f"tracking.uri={uri}"], cwd=tmp_path,
                   env_extra={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking server {uri} is unreachable")
    assert "Epoch" not in done.stdout + done.stderr  # no training started
