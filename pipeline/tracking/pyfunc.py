"""The MLflow pyfunc model: raw recent values in, raw-scale forecasts out.

It carries its own scaler, window settings and code, so a loaded model needs nothing else.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import AnyType, ColSpec, Schema

import pipeline
from pipeline.intervals import level_label
from pipeline.models.network import Forecaster, NetworkSpec

_PACKAGE_DIR = Path(pipeline.__file__).parent


def load_network(spec_path: str | Path, weights_path: str | Path) -> Forecaster:
    spec = NetworkSpec.from_dict(json.loads(Path(spec_path).read_text()))
    net = Forecaster(spec)
    # weights_only: a state dict of tensors never needs arbitrary unpickling.
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval()


class RequestError(MlflowException):
    """MLflow's invalid-parameter error (HTTP 400 from its scoring server) whose message stays
    one line. The scoring server rewrites the message of any MlflowException raised by predict to
    "Failed to predict data '<the whole request frame>'. \nError: ..." (mlflow.pyfunc.scoring_server
    .invocations), which would answer a bad request with a dump of the request; this message
    keeps the one line that names the problem, and ignores that rewrite."""

    def __init__(self, message: str) -> None:
        self._line = " ".join(str(message).split())
        super().__init__(self._line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, _rewritten: str) -> None:
        pass


def bad_request(message: str) -> MlflowException:
    """MLflow's invalid-parameter error: its scoring server answers it as HTTP 400, one line."""
    return RequestError(message)


def numeric_column(rows: pd.DataFrame, column: str) -> np.ndarray:
    """One input column as float32; a value that is not a number (text, a boolean) is refused
    naming the column and the row. Missing values (null) become NaN, refused by the caller."""
    values = rows[column]
    if pd.api.types.is_bool_dtype(values):
        raise bad_request(f"input column {column!r} holds booleans; send numbers")
    numbers = pd.to_numeric(values, errors="coerce")
    wrong = numbers.isna() & values.notna()
    if wrong.any():
        at = int(np.flatnonzero(wrong.to_numpy())[0])
        raise bad_request(f"input column {column!r} must hold numbers; row {at} of the last "
                          f"{len(rows)} holds {str(values.iloc[at])[:40]!r}")
    return numbers.to_numpy(dtype=np.float32)


def recent_window(net: Forecaster, recent: pd.DataFrame) -> torch.Tensor:
    """The last `lookback` rows of the input columns, checked: a bad request names what is wrong.
    These checks are the model's input contract (the signature leaves them to it: input_schema)."""
    spec = net.spec
    missing = [c for c in spec.inputs if c not in recent.columns]
    if missing:
        raise bad_request(f"input is missing column(s) {missing}; expected {spec.inputs}")
    if len(recent) < spec.lookback:
        raise bad_request(f"input has {len(recent)} rows; the model needs the last {spec.lookback}")
    rows = recent[spec.inputs].iloc[-spec.lookback:]
    values = np.stack([numeric_column(rows, c) for c in spec.inputs], axis=1)
    if not np.isfinite(values).all():
        column = spec.inputs[int(np.flatnonzero(~np.isfinite(values).all(axis=0))[0])]
        raise bad_request(f"input column {column!r} has NaN or infinite values in the last "
                          f"{spec.lookback} rows; send observed values only")
    return torch.from_numpy(values)  # np.stack made a fresh, writable array


SERIES_COLUMN = "series"
# How many of a universe model's codes an unknown-series refusal lists.
NAMED_CODES = 5


@torch.no_grad()
def forecast_frame(net: Forecaster, recent: pd.DataFrame) -> pd.DataFrame:
    """The last `lookback` rows of the input columns -> a frame of raw-scale predictions: one
    column per target (the point forecast: the median for a probabilistic head) and, for a
    probabilistic head, `<target>_q<level>` per quantile level, in increasing order.

    A universe model (trained on many series) reads a `series` column too: the request holds
    each series' recent rows (oldest first), and the answer one block of steps per series, in
    the order they first appear, with the series column first."""
    if net.spec.is_universe:
        return universe_forecast_frame(net, recent)
    x = net.scale_x(recent_window(net, recent)[None])
    return _forecast_rows(net, x, None)


def _forecast_rows(net: Forecaster, x: torch.Tensor, series: torch.Tensor | None) -> pd.DataFrame:
    """Scaled windows (n, lookback, inputs) -> n blocks of steps, one row per step."""
    spec = net.spec
    params = net(x, series=series)  # one pass for the point and the quantiles
    point = net.to_output(params, x, series).numpy().astype(np.float64)  # (n, steps, targets)
    n, steps = point.shape[:2]
    out = pd.DataFrame(point.reshape(n * steps, -1), columns=spec.targets)
    if net.levels:
        quantiles = net.to_quantiles(params, x=x, series=series).numpy().astype(np.float64)
        for t, target in enumerate(spec.targets):
            for q, level in enumerate(net.levels):
                out[f"{target}_{level_label(level)}"] = quantiles[:, :, t, q].reshape(-1)
    first = 1 if spec.mode == "forecast" else 0
    out.insert(0, "step", np.tile(np.arange(first, first + steps), n))
    return out


def universe_forecast_frame(net: Forecaster, recent: pd.DataFrame) -> pd.DataFrame:
    """Each series' last `lookback` rows -> its forecast, one series after another."""
    if SERIES_COLUMN not in recent.columns:
        raise bad_request(f"input has no {SERIES_COLUMN!r} column; this model forecasts "
                          f"{len(net.spec.series)} series and needs each row's series code")
    codes = recent[SERIES_COLUMN].astype(str).str.strip()
    order = list(dict.fromkeys(codes))
    try:
        ids = net.series_ids(order)
    except KeyError as exc:
        known = ", ".join(net.spec.series[:NAMED_CODES])
        raise bad_request(f"series {exc.args[0]!r} is not one this model was trained on "
                          f"({len(net.spec.series)} series: {known}, ...)") from None
    windows = []
    for code in order:
        rows = recent[(codes == code).to_numpy()]
        try:
            windows.append(recent_window(net, rows))
        except RequestError as exc:
            raise bad_request(f"series {code!r}: {exc.message}") from None
    x = net.scale_x(torch.stack(windows), ids)
    out = _forecast_rows(net, x, ids)
    steps = len(out) // len(order)
    out.insert(0, SERIES_COLUMN, np.repeat(order, steps))
    return out


class ForecastPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.net = load_network(context.artifacts["spec"], context.artifacts["weights"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return forecast_frame(self.net, pd.DataFrame(model_input))


@dataclass(frozen=True)
class LoggedModel:
    model_uri: str
    name: str | None
    version: str | None


def input_schema(spec: NetworkSpec) -> Schema:
    """The input columns, each of any type and optional. MLflow enforces a signature before the
    model's predict runs, and its refusals of a missing column or a wrong type are multi-line
    dumps of the request; declared this way MLflow passes the request through and the model's
    own checks (recent_window) refuse it in one line naming the column."""
    columns = [*([SERIES_COLUMN] if spec.is_universe else []), *spec.inputs]
    return Schema([ColSpec(AnyType(), name, required=False) for name in columns])


def model_signature(net: Forecaster, input_example: pd.DataFrame) -> ModelSignature:
    output_example = forecast_frame(net, input_example)
    with warnings.catch_warnings():
        # The integer `step` column is never missing; MLflow's generic hint does not apply.
        warnings.filterwarnings("ignore", ".*Inferred schema contains integer column.*")
        outputs = infer_signature(input_example, output_example).outputs
    return ModelSignature(inputs=input_schema(net.spec), outputs=outputs)


def _requirements(spec: NetworkSpec) -> list[str]:
    # Pinned explicitly: MLflow's inference would re-import the model in a subprocess (slow).
    torch_version = torch.__version__.split("+")[0]
    pins = [f"torch=={torch_version}", f"pandas=={version('pandas')}", f"numpy=={version('numpy')}",
            f"mlflow=={mlflow.__version__}"]
    if spec.head == "student_t":
        pins.append(f"scipy=={version('scipy')}")  # Student-t quantiles (scipy.special.stdtrit)
    return pins


def log_forecaster(handle, net: Forecaster, input_example: pd.DataFrame,
                   registered_model: str | None) -> LoggedModel:
    """Log the pyfunc model into the run of `handle` (a run.RunHandle) and, if named, register a
    new version, in the run's own store. A tracking server that is away is waited for (the whole
    logging is sent again: at worst an unregistered copy of the model is left in the run)."""
    net = net.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, weights_path = Path(tmp, "spec.json"), Path(tmp, "weights.pt")
        spec_path.write_text(json.dumps(net.spec.to_dict(), indent=2))
        # The model carries our code, without bytecode caches of this interpreter.
        code = shutil.copytree(_PACKAGE_DIR, Path(tmp, "code", "pipeline"),
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        torch.save(net.state_dict(), weights_path)
        signature = model_signature(net, input_example)

        def log_model():
            # mlflow.pyfunc.log_model exists in fluent form only: the run is made active in its store.
            with handle.active():
                return mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(Path(code) / "tracking" / "pyfunc_entry.py"),
                    artifacts={"spec": str(spec_path), "weights": str(weights_path)},
                    code_paths=[str(code)],
                    signature=signature,
                    input_example=input_example,
                    pip_requirements=_requirements(net.spec),
                    registered_model_name=registered_model,
                )

        info = handle.store.outage.call(log_model)
    version_number = getattr(info, "registered_model_version", None)
    return LoggedModel(model_uri=info.model_uri, name=registered_model,
                       version=str(version_number) if version_number is not None else None)


def load_registered_model(store, name: str, version: str | int):
    """The pyfunc model (mlflow.pyfunc.PyFuncModel) of version `version` of registered model
    `name` in `store` (a store.Store).

    The version's artifact location comes from the store's own client and is downloaded with
    the store's URI given explicitly: MLflow's process-global tracking URI plays no part (a
    `models:/` URI would be resolved against it, whatever registry_uri says). The import path is
    left as it was (loading a model with code_paths prepends its code directory to sys.path).
    """
    location = store.client.get_model_version_download_uri(name, str(version))
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        local = store.outage.call(mlflow.artifacts.download_artifacts, artifact_uri=location,
                                  dst_path=tmp, tracking_uri=store.mlflow_uri)
        saved_path = list(sys.path)
        try:
            return mlflow.pyfunc.load_model(local)
        finally:
            sys.path[:] = saved_path


def load_registered_network(store, name: str, version: str | int) -> Forecaster:
    """The network of a registered version (see load_registered_model)."""
    return load_registered_model(store, name, version).unwrap_python_model().net
