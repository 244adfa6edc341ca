"""`make predict`: the next forecast of a registered model (the champion by default), to a file.

    python -m pipeline.predict [data=...] model=models:/<name>@champion input=recent.csv output=forecast.csv

`model=`, `input=` and `output=` are short for predict.model=, predict.input=, predict.output=
(on this command `model=` names the registered model that scores, not a network config). The
input is read like the data stage reads a file (pipeline.data.sources.files: encodings,
thousands separators, newest-first rows sorted by date) and validated by the data config's rules
(date column, numbers, gaps); without an input the configured series itself is scored. The
model's own pyfunc does the scoring, exactly as the REST server would.

The output has one row per predicted step: its target date (the next business days after daily
closes, else the data's own frequency; the window's own rows for per-step sequence models; row
numbers for data without dates), the step, the raw-scale values, the last observed date it was
made from, and the registered model name and version that made it.

A universe model (data.layout=universe) forecasts every series it was trained on: the input is a
long file (date, series, values; pipeline.data.universe.read_long_frame), or the configured
universe itself, and the output has a block of steps per series with its own dates.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.cli import run_command
from pipeline.config import PredictConfig, TrainConfig, tracking_store
from pipeline.errors import DataError

SHORTHAND = ("model", "input", "output")
# Daily data: a median gap of one day. Its forecasts fall on business days unless the data itself
# has weekend rows (a series observed every day).
ONE_DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class ForecastFile:
    path: str
    model_name: str
    model_version: str
    rows: int
    first_target: str
    last_target: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- target dates ---------------------------------------------------------------------------------


def data_offset(index: pd.DatetimeIndex) -> pd.DateOffset | pd.Timedelta:
    """The step between rows: business days for daily closes, the inferred frequency otherwise
    (month starts, hours, ...), else the median gap."""
    if len(index) < 2:
        raise DataError("predicting dates needs at least two dated rows to tell their frequency")
    gaps = index.to_series().diff().dropna()
    median = gaps.median()
    if median == ONE_DAY:
        has_weekends = bool((index.dayofweek >= 5).any())
        return pd.offsets.Day() if has_weekends else pd.offsets.BDay()
    inferred = pd.infer_freq(index[-min(len(index), 25):]) if len(index) >= 3 else None
    return pd.tseries.frequencies.to_offset(inferred) if inferred else median


def future_dates(index: pd.DatetimeIndex, steps: int) -> pd.DatetimeIndex:
    offset = data_offset(index)
    last = index[-1]
    return pd.DatetimeIndex([last + offset * k for k in range(1, steps + 1)], name=index.name)


def target_index(index: pd.Index, mode: str, lookback: int, steps: int) -> pd.Index:
    """Where each predicted row lands: after the window (forecast mode), or on the window's own
    rows (sequence mode: a value per input step)."""
    if mode == "sequence":
        return index[-lookback:]
    if isinstance(index, pd.DatetimeIndex):
        return future_dates(index, steps)
    if pd.api.types.is_integer_dtype(index):
        return pd.Index(np.arange(index[-1] + 1, index[-1] + 1 + steps), name=index.name)
    return pd.Index([f"+{k}" for k in range(1, steps + 1)], name=index.name)


# --- reading and scoring --------------------------------------------------------------------------


def read_recent(cfg: TrainConfig, path: str, inputs: Sequence[str]) -> pd.DataFrame:
    """A file of recent rows, read by the data stage's file reader and validated by the data
    config's rules on the model's input columns only (a file to score has no targets yet)."""
    from pipeline.data.sources.files import read_table
    from pipeline.data.validation import rules_from_config, validate

    params = dict(cfg.data.params) if cfg.data.source == "csv" else {}
    params = {"sep": ",", "encoding": None, "thousands": ",", **params, "path": path}
    rules = rules_from_config(cfg.data, f"predict.input {path}")
    rules = dataclasses.replace(rules, columns=list(inputs),
                                positive=[c for c in rules.positive if c in inputs])
    return validate(read_table(params), rules)


def configured_series(cfg: TrainConfig) -> pd.DataFrame:
    from pipeline.data.loading import load_data

    return load_data(cfg.data).frame


def score(model, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The pyfunc's forecast; a request it refuses is one DataError line naming the input."""
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(frame.reset_index(drop=True))
    except MlflowException as exc:
        raise DataError(f"{where}: {exc.message}") from None


def forecast_table(pred: pd.DataFrame, frame: pd.DataFrame, mode: str, lookback: int,
                   name: str, version: str) -> pd.DataFrame:
    index = frame.index
    targets = target_index(index, mode, lookback, len(pred))
    label = index.name or ("date" if isinstance(index, pd.DatetimeIndex) else "row")
    table = pred.copy()
    table.insert(0, label, np.asarray(targets))
    table["origin"] = index[-1]
    table["model"] = name
    table["version"] = version
    return table


def write_atomically(table: pd.DataFrame, path: Path) -> None:
    """The whole file or nothing: written beside the target, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Rows kept per series for a universe forecast: the window, and enough dates to tell the step.
DATES_FOR_FREQUENCY = 25


def recent_universe(cfg: TrainConfig, path: str | None, spec) -> tuple[pd.DataFrame, str]:
    """Each series' last rows, long (date, series, inputs): from the file at `path`, or the
    configured universe (its series the model lacks, e.g. dropped as too short, left out)."""
    import logging

    from pipeline.data.universe import SERIES, read_long_frame
    from pipeline.data.universe_loading import read_universe

    if path is not None:
        frame, where = read_long_frame(path, cfg.data.date_format), f"predict.input {path}"
    else:
        frame, where = read_universe(cfg.data).frame, f"data={cfg.data.name}"
        known = frame[SERIES].isin(spec.series)
        if not known.all():
            logging.getLogger(__name__).warning(
                "%s: %d series the model was not trained on are not forecast",
                where, frame.loc[~known, SERIES].nunique())
        frame = frame[known]
    missing = [c for c in spec.inputs if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: no column(s) {missing}, which the model reads")
    keep = max(spec.lookback, DATES_FOR_FREQUENCY)
    return frame.groupby(SERIES, sort=False).tail(keep).reset_index(drop=True), where


def universe_forecast_table(pred: pd.DataFrame, frame: pd.DataFrame, name: str,
                            version: str) -> pd.DataFrame:
    """The pyfunc's blocks of steps per series, each dated after that series' last date."""
    from pipeline.data.universe import DATE, SERIES

    parts = []
    for code, block in pred.groupby(SERIES, sort=False):
        dates = pd.DatetimeIndex(frame.loc[frame[SERIES] == code, DATE], name=DATE)
        part = block.copy()
        part.insert(0, DATE, np.asarray(future_dates(dates, len(block))))
        part["origin"] = dates[-1]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table["model"] = name
    table["version"] = version
    return table


def series_table(cfg: TrainConfig, predict: PredictConfig, model, spec, ref) -> pd.DataFrame:
    """One series' forecast: from predict.input's rows, or the configured series'."""
    if predict.input is not None:
        frame, where = read_recent(cfg, predict.input, spec.inputs), f"predict.input {predict.input}"
    else:
        frame, where = configured_series(cfg), f"data={cfg.data.name}"
    missing = [c for c in spec.inputs if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: no column(s) {missing}, which {ref.describe()} reads")
    pred = score(model, frame[spec.inputs], where)
    return forecast_table(pred, frame, spec.mode, spec.lookback, ref.name, ref.version)


def universe_table(cfg: TrainConfig, predict: PredictConfig, model, spec, ref) -> pd.DataFrame:
    """Every series' forecast: from predict.input's long file, or the configured universe."""
    from pipeline.data.universe import SERIES

    frame, where = recent_universe(cfg, predict.input, spec)
    pred = score(model, frame[[SERIES, *spec.inputs]], where)
    return universe_forecast_table(pred, frame, ref.name, ref.version)


def write_forecast(cfg: TrainConfig, predict: PredictConfig) -> ForecastFile:
    """Resolve the model, read the recent rows, score them, write the forecast file."""
    from pipeline.serving import model_uri, resolve_model
    from pipeline.tracking.pyfunc import load_registered_model

    store = tracking_store(cfg.tracking)
    ref = resolve_model(store, model_uri(predict.model, cfg.tracking))
    model = load_registered_model(store, ref.name, ref.version)
    spec = model.unwrap_python_model().net.spec
    table = (universe_table(cfg, predict, model, spec, ref) if spec.is_universe
             else series_table(cfg, predict, model, spec, ref))
    out = Path(predict.output).expanduser()
    write_atomically(table, out)
    first, last = table.iloc[0, 0], table.iloc[-1, 0]
    return ForecastFile(path=str(out.resolve()), model_name=ref.name, model_version=ref.version,
                        rows=len(table), first_target=str(first), last_target=str(last))


def forecast_after_retrain(overrides: Sequence[str]) -> dict[str, Any]:
    """The DAG's task after promotion: the configured series' next forecast by its champion
    (promoted or kept), from the snapshot the run fetched, written beside the run's summary as
    forecast.csv. No champion yet (nothing ever beat the bar): nothing to forecast with."""
    from pipeline.errors import TrackingError
    from pipeline.retraining.stages import pinned, retrain_config, summary_path
    from pipeline.serving import model_uri, resolve_model

    cfg = pinned(retrain_config(overrides))
    predict = PredictConfig(output=str(summary_path(cfg).parent / "forecast.csv"))
    try:
        resolve_model(tracking_store(cfg.tracking), model_uri(None, cfg.tracking))
    except TrackingError as exc:
        return {"path": None, "skipped": str(exc)}
    return write_forecast(cfg, predict).as_dict()


# --- the command ----------------------------------------------------------------------------------


def expand_shorthand(argv: Sequence[str]) -> list[str]:
    """model=/input=/output= -> predict.model=/... (the rest as given). With data=csv and no
    data.params.path, the input is the data config's file too (data=csv requires one)."""
    out, given = [], {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        given[key] = value
        out.append(f"predict.{key}={value}" if sep and key in SHORTHAND else arg)
    if given.get("data") == "csv" and "data.params.path" not in given and given.get("input"):
        out.append(f"data.params.path={given['input']}")
    return out


def predict_command(cfg: TrainConfig) -> None:
    written = write_forecast(cfg, cfg.predict)
    print(f"{written.path}: {written.rows} forecast rows ({written.first_target} .. "
          f"{written.last_target}) by {written.model_name} v{written.model_version}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    import sys

    run_command("predict", predict_command, expand_shorthand(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
