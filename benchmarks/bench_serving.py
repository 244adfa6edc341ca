"""How fast does the champion answer over REST? A model of the default sine config (one series,
lookback 40, hidden 32, one epoch: the weights do not change the cost) is registered in a
temporary store and served by `mlflow models serve` exactly as `make serve` starts it
(pipeline.serving); the same model's in-process `predict` on the same rows is the baseline.

    python benchmarks/bench_serving.py [--requests 400] [--clients 4] [--out benchmarks/results]

- latency: one client, keep-alive, one request per forecast (the last 40 raw rows as
  dataframe_split JSON): p50 / p99 per request, against the in-process predict's p50.
- throughput: `--clients` concurrent clients sending such requests back to back: forecasts/s and
  input rows/s through the server, against one client.

Writes serving_cpu.{json,md}. Target (issue 21): p50 <= 20 ms per request on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import requests
import torch

from pipeline.cli import load_config, quiet_mlflow
from pipeline.config import ServeConfig

WARMUP = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def register_model(root: Path) -> tuple[str, object]:
    """Train the default sine/lstm config for one epoch into a store under `root`."""
    from pipeline.training import train

    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    cfg = load_config("train", ["trainer.max_epochs=1", "trainer.progress_bar=false",
                                "trainer.model_summary=false"])
    assert (cfg.data.lookback, cfg.model.hidden_size) == (40, 32)
    result = train(cfg)
    return f"models:/{result.model_name}/{result.model_version}", cfg


def start_server(root: Path, uri: str, port: int) -> subprocess.Popen:
    from pipeline.serving import ModelRef, server_command, server_env
    from pipeline.tracking.store import open_store

    name, version = uri.removeprefix("models:/").split("/")
    command = server_command(ModelRef(name, version, uri), ServeConfig(port=port))
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen(command, env=server_env(open_store(os.environ["MLFLOW_TRACKING_URI"])),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).ok:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((root / "serve.log").read_text()[-3000:])
        time.sleep(0.3)


def request_latencies(url: str, body: bytes, count: int) -> list[float]:
    session = requests.Session()
    headers = {"Content-Type": "application/json"}
    times = []
    for i in range(WARMUP + count):
        start = time.perf_counter()
        answer = session.post(url, data=body, headers=headers, timeout=30)
        elapsed = time.perf_counter() - start
        answer.raise_for_status()
        if i >= WARMUP:
            times.append(elapsed)
    return times


def throughput(url: str, body: bytes, clients: int, per_client: int) -> float:
    """Forecasts per second with `clients` concurrent keep-alive clients."""
    barrier = threading.Barrier(clients + 1)

    def client() -> None:
        session = requests.Session()
        headers = {"Content-Type": "application/json"}
        for _ in range(5):
            session.post(url, data=body, headers=headers, timeout=30).raise_for_status()
        barrier.wait()
        for _ in range(per_client):
            session.post(url, data=body, headers=headers, timeout=30).raise_for_status()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return clients * per_client / (time.perf_counter() - start)


def in_process_latencies(uri: str, frame, count: int) -> list[float]:
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    # The server's setting (pipeline.serving.server_env: OMP_NUM_THREADS=1), for a like-for-like baseline.
    torch.set_num_threads(1)
    times = []
    for i in range(WARMUP + count):
        start = time.perf_counter()
        model.predict(frame)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    warnings.filterwarnings("ignore")
    quiet_mlflow()
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        root = Path(tmp)
        uri, cfg = register_model(root)
        import pandas as pd

        t = np.linspace(0, 2 * np.pi * cfg.data.params["periods"], cfg.data.params["points"])
        frame = pd.DataFrame({"sin": np.sin(t)[-cfg.data.lookback:]})
        body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()
        port = free_port()
        proc = start_server(root, uri, port)
        url = f"http://127.0.0.1:{port}/invocations"
        try:
            load_before = load_average()
            local = in_process_latencies(uri, frame, args.requests)
            served = request_latencies(url, body, args.requests)
            one = throughput(url, body, 1, args.requests // 2)
            many = throughput(url, body, args.clients, args.requests // 2)
            load_after = load_average()
        finally:
            import signal

            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

    ms = 1000.0
    rows_per_request = len(frame)
    result = {
        "benchmark": "REST serving latency and throughput",
        "model": "default sine/lstm: one series, lookback 40, hidden 32",
        "server": "mlflow models serve --env-manager local (1 uvicorn worker), 127.0.0.1",
        "requests": args.requests, "warmup": WARMUP,
        "latency_ms": {
            "rest_p50": percentile(served, 50) * ms, "rest_p99": percentile(served, 99) * ms,
            "in_process_p50": percentile(local, 50) * ms, "in_process_p99": percentile(local, 99) * ms,
        },
        "throughput": {
            "clients_1_forecasts_per_s": one, "clients_1_rows_per_s": one * rows_per_request,
            f"clients_{args.clients}_forecasts_per_s": many,
            f"clients_{args.clients}_rows_per_s": many * rows_per_request,
        },
        "rows_per_request": rows_per_request,
        "target_p50_ms": 20.0,
        "load_average_1m": {"before": load_before, "after": load_after},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": 1, "torch": torch.__version__,
                    "python": platform.python_version()},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "serving_cpu.json").write_text(json.dumps(result, indent=2))
    lat, thr = result["latency_ms"], result["throughput"]
    lines = [
        f"REST serving of the default sine/lstm model (lookback 40, hidden 32) through `mlflow models "
        f"serve` (1 worker), {args.requests} requests after {WARMUP} warm-up; {os.cpu_count()} cores, "
        f"torch {torch.__version__}, 1-min load {load_before:.1f} -> {load_after:.1f}",
        "",
        "| measure | REST server | in-process predict (baseline) |",
        "|---|---|---|",
        f"| p50 per request | {lat['rest_p50']:.2f} ms | {lat['in_process_p50']:.2f} ms |",
        f"| p99 per request | {lat['rest_p99']:.2f} ms | {lat['in_process_p99']:.2f} ms |",
        f"| throughput, 1 client | {thr['clients_1_forecasts_per_s']:.0f} forecasts/s "
        f"({thr['clients_1_rows_per_s']:.0f} rows/s) | |",
        f"| throughput, {args.clients} clients | {many:.0f} forecasts/s "
        f"({many * rows_per_request:.0f} rows/s) | |",
        "",
        f"Target p50 <= 20 ms: {'met' if lat['rest_p50'] <= 20 else 'NOT met'}. A row is one of the "
        f"{rows_per_request} raw input rows of a request.",
    ]
    (out / "serving_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
