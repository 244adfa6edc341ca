"""The training data as an MLflow dataset: the run's Inputs name exactly the data it saw."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import mlflow


def dataset_for_mlflow(data: Any):
    """An mlflow.data dataset named and digested by the data's content digest.

    Takes a FetchResult or a PreparedData (anything with frame, digest, source and optionally
    cache_path).
    """
    import mlflow.data

    cache_path = getattr(data, "cache_path", None)
    with warnings.catch_warnings():
        # A local path matches two equivalent MLflow source types (either is right), and the
        # integer sample/step columns draw a hint meant for model signatures: not for us.
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(
            data.frame.reset_index(), name=f"{data.source}-{data.digest}", digest=data.digest,
            source=str(Path(cache_path).resolve()) if cache_path else None)
        _cache_schema(dataset, data.frame.reset_index())
    return dataset


# Rows the schema is inferred from. MLflow infers it from every row, checking each value of a
# text column: 8 s for a 500-series universe (465k rows). A frame's columns each hold one type
# (pandas dtypes; the data stage validated them), so its first rows give the same schema.
SCHEMA_ROWS = 1000


def _cache_schema(dataset, frame) -> None:
    """Set the dataset's (cached) schema to the one of the frame's first rows."""
    from mlflow.types.utils import _infer_schema

    try:
        schema = _infer_schema(frame.head(SCHEMA_ROWS))
    except Exception:  # as MLflow's own property: a frame it cannot describe has no schema
        schema = None
    # PandasDataset.schema is a functools.cached_property: the instance's dict holds its value.
    dataset.__dict__["schema"] = schema


# What a database says when a row another writer committed first breaks a unique key
# (sqlite, PostgreSQL, MySQL), as MLflow passes it on, locally or through a server.
_DUPLICATE_KEY = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def log_dataset(handle, data: Any, context: str = "training", attempts: int = 4) -> None:
    """Record `data` as an input of the run of `handle` (a run.RunHandle), in its own store.

    mlflow.log_input only exists in fluent form, so it runs with the run made active in the
    store's fluent block; the run stays RUNNING.

    MLflow looks a dataset up and inserts it when missing, in two steps: trainings that start
    together on the same new data all insert it and all but one break the unique key. The
    losers try again and find the winner's row (the failed call wrote nothing).
    """
    from mlflow.exceptions import MlflowException

    dataset = dataset_for_mlflow(data)
    for attempt in range(attempts):
        try:
            with handle.active():
                mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not _lost_insert_race(exc):
                raise
            time.sleep(0.2 * (attempt + 1))


def _lost_insert_race(exc: Exception) -> bool:
    message = str(exc)
    return "datasets" in message and any(marker in message for marker in _DUPLICATE_KEY)
