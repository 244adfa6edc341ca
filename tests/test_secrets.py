"""A TUSHARE_TOKEN (and any token-named config value) never reaches MLflow or the logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tracking.secrets import REDACTED, redact
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow

ENV_TOKEN = "tok-ENV-8c1f5e0d9a7b4c2e"
CFG_TOKEN = "tok-CFG-3b6a9d2e1f0c7a54"


def test_redact_names_and_values(monkeypatch) -> None:
    monkeypatch.setenv("TUSHARE_TOKEN", ENV_TOKEN)
    tree = {"data": {"api_token": "x", "password": "y", "note": f"uses {ENV_TOKEN}", "lookback": 5}}
    assert redact(tree) == {"data": {"api_token": REDACTED, "password": REDACTED,
                                     "note": REDACTED, "lookback": 5}}


def test_token_reaches_no_param_tag_artifact_store_or_log(tmp_path: Path) -> None:
    done = run_cli([*TINY, f"+data.params.api_token={CFG_TOKEN}", f"+data.note=token is {ENV_TOKEN}"],
                   cwd=tmp_path, env_extra={"TUSHARE_TOKEN": ENV_TOKEN})
    assert done.returncode == 0, done.stderr[-3000:]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)  # the scan covers the artifacts
    for token in (ENV_TOKEN, CFG_TOKEN):
        assert token not in done.stdout and token not in done.stderr
        for path in files:  # the sqlite store (params, tags) and every artifact, byte for byte
            assert token.encode() not in path.read_bytes(), path
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("sine").experiment_id])[0]
    assert run.data.params["data.params.api_token"] == REDACTED
    assert run.data.params["data.note"] == REDACTED
