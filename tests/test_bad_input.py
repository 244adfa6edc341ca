"""The bad-input catalogue: every refusal through the real entry point (pipeline.train.main, as
`make train` calls it, in-process for speed) is exit 2, exactly one stderr line naming the key or
file, no traceback, and a tracking store with no run, experiment or model version in it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.train import main as train_main
from tests.conftest import free_port

TINY = ["trainer.max_epochs=1", "trainer.progress_bar=false", "trainer.model_summary=false"]


def _prices(rows: int = 60, start: str = "2024-01-01") -> pd.DataFrame:
    dates = pd.bdate_range(start, periods=rows)
    close = 3000 + np.cumsum(np.random.default_rng(0).normal(0, 10, rows))
    return pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "close": close.round(2)})


def _write(path: Path, frame: pd.DataFrame) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def make_file(kind: str, folder: Path) -> str:
    """A price file with one thing wrong (or none), as a user might have it."""
    path = folder / f"{kind}.csv"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "gbk":
        text = "日期,收盘价\n" + "\n".join(f"2024-01-{d:02d},{3000 + d}" for d in range(1, 29))
        path.write_bytes(text.encode("gbk"))
    elif kind == "duplicate":
        frame = _prices()
        frame.loc[5, "date"] = frame.loc[4, "date"]
        _write(path, frame)
    elif kind == "nan":
        frame = _prices()
        frame.loc[7, "close"] = np.nan
        _write(path, frame)
    elif kind == "negative":
        frame = _prices()
        frame.loc[9, "close"] = -5.0
        _write(path, frame)
    elif kind == "short":
        _write(path, _prices(rows=12))
    else:
        _write(path, _prices())
    return str(path)


def csv_args(kind: str, folder: Path, *extra: str) -> list[str]:
    return ["data=csv", f"data.params.path={make_file(kind, folder)}", *extra]


# (id, overrides, what the one line must name). Callables get the temp folder.
CASES = [
    # wrong types
    ("int-type", ["trainer.max_epochs=abc"], "trainer.max_epochs"),
    ("int-from-float", ["model.hidden_size=1.5"], "model.hidden_size"),
    ("bool-type", ["model.bidirectional=maybe"], "model.bidirectional"),
    ("float-type", ["optim.lr=fast"], "optim.lr"),
    ("list-for-int", ["data.lookback=[1,2]"], "data.lookback"),
    ("root-int", ["seed=x"], "seed"),
    # ranges
    ("negative-hidden", ["model.hidden_size=-3"], "model.hidden_size=-3"),
    ("zero-layers", ["model.num_layers=0"], "model.num_layers"),
    ("dropout-one", ["model.dropout=1.0"], "model.dropout"),
    ("zero-lr", ["optim.lr=0"], "optim.lr"),
    ("negative-decay", ["optim.weight_decay=-1"], "optim.weight_decay"),
    ("zero-devices", ["trainer.devices=0"], "trainer.devices"),
    ("zero-epochs", ["trainer.max_epochs=0"], "trainer.max_epochs"),
    ("zero-batch", ["data.batch_size=0"], "data.batch_size"),
    ("zero-stride", ["data.stride=0"], "data.stride"),
    ("negative-clip", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val"),
    ("teacher-forcing", ["model=seq2seq", "data=sst_synthetic", "model.teacher_forcing=2"],
     "model.teacher_forcing"),
    # unknown keys and typos
    ("typo-key", ["model.hiden_size=64"], "did you mean model.hidden_size"),
    ("typo-added-key", ["+model.hiden_size=64"], "did you mean model.hidden_size"),
    ("typo-trainer", ["trainer.max_epoch=3"], "did you mean trainer.max_epochs"),
    ("typo-source-param", ["data.params.pints=3"], "did you mean data.params.points"),
    ("unknown-section", ["optimm.lr=1"], "optimm: unknown key; did you mean optim?"),
    # choices
    ("unknown-data", ["data=nope"], "data='nope'"),
    ("unknown-model", ["model=lstmm"], "did you mean lstm"),
    ("unknown-trainer", ["trainer=tpu"], "trainer='tpu'"),
    ("unknown-tracking", ["tracking=cloud"], "tracking='cloud'"),
    ("init-state", ["model.init_state=random"], "model.init_state"),
    ("scaler", ["data.scaler=robust"], "data.scaler"),
    ("precision", ["trainer.precision=8"], "trainer.precision"),
    ("metric-for-task", ["promotion.metric=accuracy"], "promotion.metric"),
    ("test-checkpoint", ["trainer.test_checkpoint=worst"], "trainer.test_checkpoint"),
    # rules across fields
    ("split-sum", ["data.split.train=0.9"], "data.split"),
    ("burn-in", ["data.burn_in=40"], "data.burn_in"),
    ("seq2seq-on-sequence", ["model=seq2seq"], "model.name"),
    ("dates-inverted", ["data=sst", "data.split.train_end=2000-01-01", "data.split.val_end=1990-01-01"],
     "data.split.val_end"),
    ("window-longer-than-split", ["data.lookback=500"], "data.split"),
    ("bits-vs-lookback", ["data=binary_add", "data.lookback=5"], "data.lookback"),
    # command-line grammar
    ("unbalanced-list", ["data.lookback=[1,2"], "data.lookback=[1,2"),
    ("unbalanced-quote", ["data.date_column='日期"], "data.date_column"),
    ("sweep-without-m", ["model=lstm,gru"], "-m"),
    # files
    ("csv-without-path", ["data=csv"], "data.params.path"),
    ("missing-file", ["data=csv", "data.params.path=no_such_prices.csv"], "no_such_prices.csv"),
    ("empty-file", lambda d: csv_args("empty", d), "empty.csv"),
    ("binary-file", lambda d: csv_args("binary", d), "binary.csv"),
    ("gbk-read-as-utf8", lambda d: csv_args("gbk", d, "data.params.encoding=utf-8",
                                            "data.date_column='日期'", "data.inputs=['收盘价']",
                                            "data.targets=['收盘价']"), "data.params.encoding"),
    ("unknown-encoding", lambda d: csv_args("good", d, "data.params.encoding=klingon"),
     "data.params.encoding"),
    ("duplicate-date", lambda d: csv_args("duplicate", d), "duplicate.csv"),
    ("nan-close", lambda d: csv_args("nan", d), "'close'"),
    ("negative-price", lambda d: csv_args("negative", d, "data.positive=true"), "'close'"),
    ("too-short", lambda d: csv_args("short", d), "short.csv"),
    ("missing-column", lambda d: csv_args("good", d, "data.inputs=[open]", "data.targets=[open]"),
     "'open'"),
    # the tracking store
    ("unreachable-server", lambda d: [f"tracking.uri=http://127.0.0.1:{free_port()}"], "127.0.0.1"),
    ("unknown-scheme", ["tracking.uri=foo://bar"], "foo://bar"),
    ("sqlite-dir-missing", lambda d: [f"tracking.uri=sqlite:///{d}/no/such/dir/mlflow.db"], "no/such/dir"),
    ("artifact-root-is-a-file", lambda d: [f"tracking.artifact_root={make_file('good', d)}"],
     "artifact"),
]


def _store_contents(db: Path) -> tuple[int, int, int]:
    """(runs, experiments other than MLflow's Default, model versions) in a sqlite store."""
    if not db.exists():
        return 0, 0, 0
    with sqlite3.connect(db) as conn:
        tables = {row[0] for row in conn.execute("select name from sqlite_master where type='table'")}
        if "runs" not in tables:
            return 0, 0, 0
        runs = conn.execute("select count(*) from runs").fetchone()[0]
        experiments = conn.execute("select count(*) from experiments where name != 'Default'").fetchone()[0]
        versions = conn.execute("select count(*) from model_versions").fetchone()[0]
    return runs, experiments, versions


@pytest.mark.parametrize(("overrides", "named"), [pytest.param(o, n, id=i) for i, o, n in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(overrides, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "cache"))
    args = overrides(tmp_path) if callable(overrides) else overrides
    with pytest.raises(SystemExit) as stopped:
        train_main([*TINY, *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert stopped.value.code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert named in lines[0], lines[0]
    assert _store_contents(db) == (0, 0, 0)
    assert not (tmp_path / "mlartifacts").exists()
    assert not (tmp_path / "cache").exists()


def test_catalogue_is_at_least_forty_cases():
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)
