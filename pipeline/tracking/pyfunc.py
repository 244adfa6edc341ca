"""The MLflow pyfunc model: raw recent values in, raw-scale forecasts out.

It carries its own scaler, window settings and code, so a loaded model needs nothing else.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature

import pipeline
from pipeline.models.network import Forecaster, NetworkSpec

_PACKAGE_DIR = Path(pipeline.__file__).parent


def load_network(spec_path: str | Path, weights_path: str | Path) -> Forecaster:
    spec = NetworkSpec.from_dict(json.loads(Path(spec_path).read_text()))
    net = Forecaster(spec)
    # weights_only: a state dict of tensors never needs arbitrary unpickling.
    net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return net.eval()


def forecast_frame(net: Forecaster, recent: pd.DataFrame) -> pd.DataFrame:
    """The last `lookback` rows of the input columns -> a frame of raw-scale predictions."""
    spec = net.spec
    missing = [c for c in spec.inputs if c not in recent.columns]
    if missing:
        raise ValueError(f"input is missing column(s) {missing}; expected {spec.inputs}")
    if len(recent) < spec.lookback:
        raise ValueError(f"input has {len(recent)} rows; the model needs the last {spec.lookback}")
    window = torch.tensor(recent[spec.inputs].to_numpy(dtype=np.float32)[-spec.lookback:])
    pred = net.predict_raw(window[None])[0].numpy().astype(np.float64)
    out = pd.DataFrame(pred, columns=spec.targets)
    out.insert(0, "step", np.arange(1, len(out) + 1) if spec.mode == "forecast" else np.arange(len(out)))
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


def _requirements() -> list[str]:
    # Pinned explicitly: MLflow's inference would re-import the model in a subprocess (slow).
    torch_version = torch.__version__.split("+")[0]
    return [f"torch=={torch_version}", f"pandas=={version('pandas')}", f"numpy=={version('numpy')}",
            f"mlflow=={mlflow.__version__}"]


def log_forecaster(net: Forecaster, input_example: pd.DataFrame, registered_model: str | None) -> LoggedModel:
    """Log the pyfunc model into the active run and, if named, register a new version."""
    net = net.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, weights_path = Path(tmp, "spec.json"), Path(tmp, "weights.pt")
        spec_path.write_text(json.dumps(net.spec.to_dict(), indent=2))
        # The model carries our code, without bytecode caches of this interpreter.
        code = shutil.copytree(_PACKAGE_DIR, Path(tmp, "code", "pipeline"),
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        torch.save(net.state_dict(), weights_path)
        output_example = forecast_frame(net, input_example)
        with warnings.catch_warnings():
            # The integer `step` column is never missing; MLflow's generic hint does not apply.
            warnings.filterwarnings("ignore", ".*Inferred schema contains integer column.*")
            signature = infer_signature(input_example, output_example)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(code) / "tracking" / "pyfunc_entry.py"),
            artifacts={"spec": str(spec_path), "weights": str(weights_path)},
            code_paths=[str(code)],
            signature=signature,
            input_example=input_example,
            pip_requirements=_requirements(),
            registered_model_name=registered_model,
        )
    version_number = getattr(info, "registered_model_version", None)
    return LoggedModel(model_uri=info.model_uri, name=registered_model,
                       version=str(version_number) if version_number is not None else None)
