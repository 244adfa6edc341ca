"""Model-from-code entry for MLflow: the logged model is this file plus its artifacts.

Logging by file instead of pickling the object means loading the model never unpickles code.
"""

import mlflow

from pipeline.tracking.pyfunc import ForecastPyfunc

mlflow.models.set_model(ForecastPyfunc())
