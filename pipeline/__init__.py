"""LSTM-family time-series pipeline: fetch -> DataModule -> LightningModule -> MLflow."""

import os

# MLflow's usage telemetry is off unless the user turns it on. The pipeline runs offline (CI,
# schedulers), where the telemetry thread's failed config fetch removes its session variable
# from os.environ while a tracking request iterates os.environ: that request fails with a
# KeyError ('_MLFLOW_TELEMETRY_SESSION_ID'), seen with eight trainings on one server. Set
# before any import of mlflow, which starts the thread; the processes we start inherit it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
