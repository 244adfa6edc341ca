"""A TUSHARE_TOKEN (and any secret value, and the credentials of a URI) never reaches MLflow or the logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.secrets import REDACTED, redact, scrub_text, strip_credentials
from tests.conftest import TINY, run_cli

ENV_TOKEN = "tok-ENV-8c1f5e0d9a7b4c2e"


def test_redact_names_and_values(monkeypatch) -> None:
    monkeypatch.setenv("TUSHARE_TOKEN", ENV_TOKEN)
    tree = {"data": {"api_token": "x", "password": "y", "note": f"uses {ENV_TOKEN}", "lookback": 5}}
    assert redact(tree) == {"data": {"api_token": REDACTED, "password": REDACTED,
                                     "note": REDACTED, "lookback": 5}}


def test_uris_lose_their_credentials_in_text_and_configs(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    line = "cannot reach http://user:pw@host:5000/api and postgresql+psycopg2://me:p@ss@db:5432/x"
    assert scrub_text(line) == ("cannot reach http://***@host:5000/api and "
                                "postgresql+psycopg2://***@db:5432/x")
    assert strip_credentials("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
    assert strip_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    tree = {"tracking": {"uri": "https://bob:hunter22@mlflow.example.org"}, "data": ["http://t0k3n@x"]}
    assert redact(tree) == {"tracking": {"uri": "https://***@mlflow.example.org"},
                            "data": ["http://***@x"]}


@pytest.mark.slow
def test_token_reaches_no_param_tag_artifact_store_or_log(tmp_path: Path) -> None:
    # The typed config takes no new keys, so a secret can only ride in a value (here the study
    # name); it must be caught by value, wherever it goes.
    done = run_cli([*TINY, f"study=uses-{ENV_TOKEN}"], cwd=tmp_path,
                   env_extra={"TUSHARE_TOKEN": ENV_TOKEN, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert done.returncode == 0, done.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)  # the scan covers the artifacts
    assert ENV_TOKEN not in done.stdout and ENV_TOKEN not in done.stderr
    for path in files:  # the sqlite store (params, tags) and every artifact, byte for byte
        assert ENV_TOKEN.encode() not in path.read_bytes(), path
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("sine").experiment_id])[0]
    assert run.data.params["study"] == REDACTED
    assert run.data.tags["study"] == REDACTED
