"""Shared fixtures: tiny configs composed by Hydra exactly as the CLI does, temporary MLflow stores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import load_config

REPO = Path(__file__).resolve().parent.parent

# Small enough to train in seconds on 2 CPU cores, big enough to learn something.
TINY = [
    "data.params.points=400",
    "data.lookback=20",
    "model.hidden_size=16",
    "trainer.max_epochs=3",
    "trainer.progress_bar=false",
    "trainer.model_summary=false",
]


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Locks and kept checkpoints go to a per-test state directory, never the user's own, and
    beside the test's folder rather than in it (tests assert what a run leaves in its cwd)."""
    state = tmp_path.parent / f"{tmp_path.name}-state"
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite tracking store; the test runs inside tmp_path so ./mlartifacts lands there."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def compose_config(*overrides: str):
    """The typed, checked config the CLI would run with these overrides."""
    return load_config("train", overrides)


def run_cli(args: list[str], cwd: Path, env_extra: dict[str, str] | None = None,
            module: str = "pipeline.train", timeout: int = 600) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as `make train` runs it."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float, what: str) -> None:
    """Until `url` answers 200; RuntimeError with the tail of the server's log if `proc` exits
    or `timeout_s` passes first."""
    import time

    import requests

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM to a server started with start_new_session=True (it and its workers), SIGKILL
    after `grace_s`."""
    import signal

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` on a free 127.0.0.1 port with its own sqlite store and artifact
    root; always stopped at the end of the test."""


    port = free_port()
    root = tmp_path / "server"
    root.mkdir()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", proc, root / "server.log", 90, "mlflow server")
        yield uri
    finally:
        stop_process_group(proc)
        log.close()
