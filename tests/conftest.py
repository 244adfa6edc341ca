"""Shared fixtures: tiny configs composed by Hydra exactly as the CLI does, temporary MLflow stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# Small enough to train in seconds on 2 CPU cores, big enough to learn something.
TINY = [
    "data.params.points=400",
    "data.lookback=20",
    "model.hidden_size=16",
    "trainer.max_epochs=3",
    "trainer.progress_bar=false",
    "trainer.model_summary=false",
]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store; the test runs inside tmp_path so ./mlartifacts lands there."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_cli(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None,
            module: str = "pipeline.train", timeout: int = 600) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as `make train` runs it."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
