"""Using the champion: MLflow's scoring server over it (`make serve`), a file scored by it
(`make predict`), the container recipe (`mlflow models generate-dockerfile`).

One tiny model is trained for the module on a daily price file (business days, Chinese
headers) and one real `mlflow models serve` process is started for it, on a free loopback
port, through `python -m pipeline.serving` with the venv's bin folder off PATH (as `make serve`
runs from a fresh clone without an activated venv).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests

from tests.conftest import REPO, compose_config, free_port, stop_process_group, wait_for_http

NAME = "prices-forecaster"  # data=csv names the model after the file: prices.csv
CHAMPION_URI = f"models:/{NAME}@champion"
DATE, CLOSE = "日期", "收盘价"
LOOKBACK, HORIZON = 10, 2
DATA = ["data=csv", "data.params.path=prices.csv", f"data.date_column='{DATE}'",
        f"data.inputs=['{CLOSE}']", f"data.targets=['{CLOSE}']", f"data.lookback={LOOKBACK}",
        f"data.horizon={HORIZON}", "data.scaler=minmax"]
# The plots of a run titled in Chinese lack glyphs in matplotlib's default font: not this test's concern.
pytestmark = pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
TINY_NET = ["model.hidden_size=8", "trainer.max_epochs=2", "trainer.progress_bar=false",
            "trainer.model_summary=false"]


def price_frame(days: int = 160) -> pd.DataFrame:
    """Daily closes on business days around 3000 (an index level: raw scale is unmistakable)."""
    dates = pd.bdate_range("2024-01-01", periods=days)
    t = np.arange(days)
    close = 3000 + 150 * np.sin(t / 9) + np.random.default_rng(0).normal(0, 5, days)
    return pd.DataFrame({DATE: dates.strftime("%Y-%m-%d"), CLOSE: close.round(2)})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model registered (and, being the first, promoted) in a fresh store; the module's
    tests run in its folder, with MLflow pointed at it."""
    from pipeline.training import train

    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("XDG_STATE_HOME", str(root / "state"))
        price_frame().to_csv(root / "prices.csv", index=False)
        result = train(compose_config(*DATA, *TINY_NET))
        assert result.model_name == NAME and result.promotion.promoted
        yield root, result


@pytest.fixture(scope="module")
def server(trained):
    """`python -m pipeline.serving` (what `make serve` runs) on a free 127.0.0.1 port."""
    root, result = trained
    port = free_port()
    log = root / "serve.log"
    env = {**os.environ, "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.serving", f"serve.model={CHAMPION_URI}",
                                 f"serve.port={port}"], cwd=root, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/ping", proc, log, 180, "the scoring server")
        yield url, log, result
    finally:
        stop_process_group(proc)


def recent_rows() -> pd.DataFrame:
    return price_frame()[[CLOSE]].iloc[-LOOKBACK:].reset_index(drop=True)


def post(url: str, frame: pd.DataFrame) -> requests.Response:
    split = json.loads(frame.to_json(orient="split", index=False))
    return requests.post(f"{url}/invocations", json={"dataframe_split": split}, timeout=30)


@pytest.mark.slow
def test_the_server_answers_what_the_loaded_model_predicts(server) -> None:
    url, log, result = server
    answer = post(url, recent_rows())
    assert answer.status_code == 200, answer.text
    served = pd.DataFrame(answer.json()["predictions"])

    expected = mlflow.pyfunc.load_model(CHAMPION_URI).predict(recent_rows())
    assert list(served.columns) == ["step", CLOSE] and served["step"].tolist() == [1, 2]
    np.testing.assert_allclose(served[CLOSE], expected[CLOSE], rtol=1e-6)
    # raw scale: prices near 3000, not the scaled values the network works in
    assert 2500 < served[CLOSE].mean() < 3500
    assert log.read_text().splitlines()[0].startswith(f"serving {NAME} v{result.model_version} ")


BAD = {
    "missing column": (pd.DataFrame({"close": recent_rows()[CLOSE]}), CLOSE),
    "too few rows": (recent_rows().iloc[-3:], f"3 rows; the model needs the last {LOOKBACK}"),
    "NaN": (recent_rows().assign(**{CLOSE: np.nan}), "NaN"),
    "wrong type": (recent_rows().assign(**{CLOSE: "n/a"}), f"{CLOSE!r} must hold numbers"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_is_a_400_with_one_line_naming_the_problem(server, case) -> None:
    url, _, _ = server
    frame, named = BAD[case]
    answer = post(url, frame)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error_code"] == "INVALID_PARAMETER_VALUE" and "stack_trace" not in body
    assert "\n" not in body["message"] and named in body["message"], body["message"]
    assert len(body["message"]) < 200  # the problem, not a dump of the request


def test_serving_without_a_store_or_a_champion_is_one_line(store, capsys) -> None:
    from pipeline import serving
    from pipeline.config import tracking_store

    with pytest.raises(SystemExit) as stopped:
        serving.main([])
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "there is no store at" in line and "make train" in line
    assert not Path("mlflow.db").exists()  # not created by asking

    tracking_store(compose_config().tracking).check()  # an empty store: no model in it
    with pytest.raises(SystemExit) as stopped:
        serving.main([])
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "no alias @champion of registered model 'sine-forecaster'" in line


def test_serve_and_predict_keys_are_checked(store, capsys) -> None:
    from pipeline import predict, serving

    for main, args, named in [(serving.main, ["serve.port=0"], "serve.port=0"),
                              (serving.main, ["serve.model=sine-forecaster"], "serve.model="),
                              (predict.main, ["output=forecast.txt"], "predict.output=")]:
        with pytest.raises(SystemExit) as stopped:
            main(args)
        assert stopped.value.code == 2
        assert named in capsys.readouterr().err


# --- make predict ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_predict_writes_the_next_business_days_with_the_model_that_made_them(trained) -> None:
    """A GBK file, newest row first, ending on a Friday: the forecast is for Monday and Tuesday,
    equal to the model's prediction on the last rows in date order."""
    from pipeline import predict

    root, result = trained
    frame = price_frame()
    recent = frame.iloc[-30:]
    assert pd.Timestamp(recent[DATE].iloc[-1]).day_name() == "Friday"
    recent.iloc[::-1].to_csv(root / "recent.csv", index=False, encoding="gbk")

    predict.main([*DATA, f"model={CHAMPION_URI}", "input=recent.csv", "output=out/forecast.csv"])
    written = pd.read_csv(root / "out" / "forecast.csv")

    last = pd.Timestamp(recent[DATE].iloc[-1])
    assert written[DATE].tolist() == [(last + pd.Timedelta(days=d)).strftime("%Y-%m-%d")
                                      for d in (3, 4)]  # Friday -> Monday, Tuesday
    expected = mlflow.pyfunc.load_model(CHAMPION_URI).predict(recent[[CLOSE]].iloc[-LOOKBACK:])
    np.testing.assert_allclose(written[CLOSE], expected[CLOSE], rtol=1e-6)
    assert written["step"].tolist() == [1, 2]
    assert set(written["model"]) == {NAME} and set(written["version"].astype(str)) == {result.model_version}
    assert set(pd.to_datetime(written["origin"])) == {last}


@pytest.mark.slow
def test_predict_refuses_a_bad_file_in_one_line_and_writes_nothing(trained, capsys) -> None:
    from pipeline import predict

    root, _ = trained
    frame = price_frame().iloc[-30:].copy()
    frame[CLOSE] = frame[CLOSE].astype(object)
    frame.iloc[-2, 1] = "停牌"  # suspended: not a number
    frame.to_csv(root / "suspended.csv", index=False)
    with pytest.raises(SystemExit) as stopped:
        predict.main([*DATA, f"model={CHAMPION_URI}", "input=suspended.csv", "output=bad.csv"])
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "suspended.csv" in line and CLOSE in line
    assert not (root / "bad.csv").exists() and not list(root.glob(".bad.csv.*"))


def test_forecast_dates_follow_the_data_frequency() -> None:
    from pipeline.predict import target_index

    friday = pd.bdate_range("2024-03-04", "2024-03-29")  # business days, ending on a Friday
    assert list(target_index(friday, "forecast", 10, 2)) == [pd.Timestamp("2024-04-01"),
                                                              pd.Timestamp("2024-04-02")]
    every_day = pd.date_range("2024-03-01", "2024-03-30")  # has weekends: calendar days
    assert target_index(every_day, "forecast", 10, 1)[0] == pd.Timestamp("2024-03-31")
    months = pd.date_range("2020-01-01", periods=24, freq="MS")
    assert list(target_index(months, "forecast", 12, 2)) == [pd.Timestamp("2022-01-01"),
                                                              pd.Timestamp("2022-02-01")]
    rows = pd.RangeIndex(100)
    assert list(target_index(rows, "forecast", 10, 3)) == [100, 101, 102]
    assert list(target_index(rows, "sequence", 10, 10)) == list(range(90, 100))


# --- the model as logged, and its container recipe -------------------------------------------------


@pytest.mark.slow
def test_the_logged_model_pins_its_requirements(trained) -> None:
    root, result = trained
    local = mlflow.artifacts.download_artifacts(f"models:/{NAME}/{result.model_version}",
                                                dst_path=str(root / "downloaded"))
    pins = (Path(local) / "requirements.txt").read_text().split()
    import torch

    assert pins == [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}",
                    f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"]


@pytest.mark.slow
def test_generate_dockerfile_for_the_champion_works_offline(trained) -> None:
    root, result = trained
    out = root / "docker"
    env = {**os.environ, "PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    done = subprocess.run([sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m",
                           CHAMPION_URI, "-d", str(out), "--env-manager", "local"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir /opt/ml/model" in dockerfile and f"mlflow=={mlflow.__version__}" in dockerfile
    meta = (out / "model_dir" / "registered_model_meta").read_text()
    assert f"model_name: {NAME}" in meta and f"model_version: {result.model_version}" in meta


def test_the_makefile_serves_the_champion_on_loopback_whatever_the_shell_exports() -> None:
    env = {**os.environ, "HOST": "0.0.0.0", "PORT": "80"}
    shown = subprocess.run(["make", "-n", "serve"],
                           cwd=REPO, env=env, capture_output=True, text=True).stdout
    line = [x for x in shown.splitlines() if "pipeline.serving" in x][-1]
    assert "serve.host" not in line and "serve.port" not in line
    asked = subprocess.run(["make", "-n", "serve", "MODEL=models:/x@champion", "PORT=5002"],
                           cwd=REPO, capture_output=True, text=True).stdout
    line = [x for x in asked.splitlines() if "pipeline.serving" in x][-1]
    assert "serve.model=models:/x@champion" in line and "serve.port=5002" in line
