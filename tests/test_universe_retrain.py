"""Retraining a universe (data.layout=universe): `make fetch`'s line, `make retrain`'s chain on a
small universe_synthetic (real Trainer, real sqlite MLflow store), the fetched digest against the
one training computes, and the DAG's chunked fetch of universe_stock (the pro API faked at
tushare_prices.connect, as tests/test_universe_stock.py does)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import load_config
from pipeline.data.datamodule import prepare_data
from pipeline.data.sources import SourceUnavailable, tushare_prices
from pipeline.data.universe_loading import read_universe
from pipeline.errors import ConfigError, DataError
from pipeline.fetch import main as fetch_main
from pipeline.retraining import stages
from pipeline.retraining.records import ChunkReport, FetchReport
from pipeline.tracking.champion import (
    CHAMPION,
    load_registered_network,
    load_test_windows,
    score_on_windows,
)
from pipeline.tracking.store import open_store
from tests import test_universe_stock
from tests.test_universe_stock import TOKEN, ProApi

SMALL = [
    "data=universe_synthetic",
    "data.params.n_series=8",
    "data.params.days=200",
    "data.lookback=10",
    "data.min_windows=5",
    "model.hidden_size=8",
    "trainer.max_epochs=1",
    "trainer.progress_bar=false",
    "trainer.model_summary=false",
]
STOCK = ["data=universe_stock", "data.params.api=pro", "data.params.start=2024-01-01",
         "data.params.attempts=1", "data.lookback=3", "data.min_windows=1"]
CODES = ["600000.SH", "600519.SH", "601318.SH", "000001.SZ", "000858.SZ"]
DAYS = 40  # bars per code: enough for a window in every split at data.lookback=3
LAST_DAY = f"{pd.bdate_range('2024-01-02', periods=DAYS)[-1]:%Y-%m-%d}"


@pytest.fixture
def pro(monkeypatch) -> ProApi:
    """tests/test_universe_stock.py's fake pro API, with DAYS bars per code."""
    fake = ProApi()
    reply = test_universe_stock.daily_reply
    monkeypatch.setattr(test_universe_stock, "daily_reply", lambda code, days=DAYS: reply(code, days))
    monkeypatch.setenv("TUSHARE_TOKEN", TOKEN)
    monkeypatch.setattr(tushare_prices, "connect", lambda token, timeout: fake)
    return fake


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch) -> None:
    """make fetch's main configures logging onto the captured stdout; pytest closes that stream
    after the test, so the process's later log lines must not go there."""
    monkeypatch.setattr("pipeline.cli.configure_logging", lambda *args, **kwargs: None)


def stock(tmp_path, *more: str) -> list[str]:
    return [*STOCK, f"data.cache_dir={tmp_path / 'cache'}", *more]


# --- make fetch ----------------------------------------------------------------------------------


def test_the_fetch_line_of_a_synthetic_universe(capsys) -> None:
    fetch_main(SMALL[:3])
    line = capsys.readouterr().out.strip().splitlines()[-1]  # after any log lines
    frame = read_universe(load_config("train", SMALL[:3]).data).frame
    digest = prepare_data(load_config("train", SMALL).data).digest
    assert line.startswith(f"data=universe_synthetic source=universe_synthetic: 8 series "
                           f"{len(frame)} rows 2015-01-05..")
    assert f"digest {digest}" in line and line.endswith("not cached (generated each run)")


def test_the_fetch_line_of_a_stock_universe_names_its_failed_codes_and_cache(pro, tmp_path,
                                                                             capsys) -> None:
    pro.refuse["600519.SH"] = f"token {TOKEN} refused"
    fetch_main(stock(tmp_path))
    out = capsys.readouterr()
    line = out.out.strip().splitlines()[-1]  # after the log lines
    assert TOKEN not in out.out + out.err
    assert line.startswith("data=universe_stock source=universe_stock: 4 of 5 series (failed 1: "
                           f"600519.SH) {4 * DAYS} rows 2024-01-02..{LAST_DAY}  digest ")
    assert f"cache {(tmp_path / 'cache').resolve()} (one file per code" in line


# --- the fetched digest is the trained one -------------------------------------------------------


def test_a_synthetic_snapshot_has_the_digest_and_rows_training_computes() -> None:
    report = stages.fetch_snapshot(SMALL)
    prepared = prepare_data(stages.pinned(stages.retrain_config(SMALL)).data)
    assert report.digest == prepared.digest
    assert (report.rows, report.series) == (len(prepared.frame), 8)
    assert report.cache_path is None and report.failed == {} and report.notice is None


def test_a_file_universe_snapshot_matches_even_when_the_file_is_unsorted(tmp_path) -> None:
    frame = read_universe(load_config("train", SMALL).data).frame
    path = tmp_path / "closes.csv"
    frame.sample(frac=1.0, random_state=0).to_csv(path, index=False)  # rows in any order
    overrides = ["data=universe_file", f"data.params.path={path}", "data.lookback=10",
                 "data.min_windows=5"]
    report = stages.fetch_snapshot(overrides)
    assert report.digest == prepare_data(stages.retrain_config(overrides).data).digest
    assert (report.rows, report.series) == (len(frame), 8)


def test_a_stock_universe_fetched_online_matches_its_offline_rereading(pro, tmp_path) -> None:
    pro.refuse["000858.SZ"] = "您的积分不足"
    report = stages.fetch_snapshot(stock(tmp_path))
    calls = len(pro.calls)
    prepared = prepare_data(stages.pinned(stages.retrain_config(stock(tmp_path))).data)
    assert len(pro.calls) == calls  # pinned: read from the per-code caches only
    assert report.digest == prepared.digest and report.rows == len(prepared.frame) == 4 * DAYS
    assert report.series == 4 and list(report.failed) == ["000858.SZ"]
    assert report.notice.startswith("universe: 4 of 5 codes fetched; failed: 000858.SZ (")
    assert report.cache_path == str((tmp_path / "cache").resolve())
    assert FetchReport.from_dict(report.as_dict()) == report  # through XCom and back


# --- make retrain ---------------------------------------------------------------------------------


def test_retraining_a_universe_registers_every_variant_and_promotes_the_best(store, tmp_path) -> None:
    overrides = [*SMALL, "retrain.variants=[lstm,gru]", "retrain.max_mase=null",
                 f"retrain.output_dir={tmp_path / 'out'}"]
    summary = stages.retrain(overrides)

    client = MlflowClient(store)
    name = summary.model_name
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == ["1", "2"]
    assert sorted(c["variant"] for c in summary.candidates) == ["gru", "lstm"]
    assert summary.data_digest == prepare_data(stages.retrain_config(SMALL).data).digest
    assert {c["data_digest"] for c in summary.candidates} == {summary.data_digest}

    # The champion is the candidate with the better score on the common (series-aware) windows.
    tracking = open_store(store)
    windows = load_test_windows(tracking, summary.candidates[0]["run_id"])
    assert "series" in windows
    scores = {v: score_on_windows(load_registered_network(tracking, name, v), windows, "mse")
              for v in versions}
    champion = str(client.get_model_version_by_alias(name, CHAMPION).version)
    assert summary.promoted and summary.champion == champion == min(scores, key=scores.get)
    # The champion's next close of every series it knows, from the fetched snapshot.
    from pipeline.predict import forecast_after_retrain

    written = forecast_after_retrain(overrides)
    forecast = pd.read_csv(written["path"], dtype={"series": str})
    known = load_registered_network(tracking, name, champion).spec.series
    assert sorted(forecast["series"]) == sorted(known) and set(forecast["version"]) == {int(champion)}


# --- the DAG's chunked fetch ------------------------------------------------------------------------


def test_chunk_sizes_and_chunks() -> None:
    assert stages.chunk_size("50") == 50 and stages.chunk_size(" 2 ") == 2
    for bad in ("0", "-3", "ten", ""):
        with pytest.raises(ConfigError, match=f"PIPELINE_RETRAIN_FETCH_CHUNK={bad!r}: must be"):
            stages.chunk_size(bad)
    assert stages.chunked(list("abcde"), 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert stages.chunked(list("ab"), 50) == [["a", "b"]]


def test_the_plan_chunks_the_codes_and_the_index_members_once(pro, tmp_path) -> None:
    pro.weights = pd.DataFrame({"index_code": "000300.SH", "con_code": ["600000.SH", "688981.SH"],
                                "trade_date": "20240105", "weight": 1.0})
    overrides = stock(tmp_path, "data.params.index=000300.SH", "data.params.members_on=2024-01-10")
    assert stages.fetch_plan(overrides, "2") == [CODES[:2], CODES[2:4], ["000858.SZ", "688981.SH"]]
    assert stages.fetch_plan(SMALL, "2") == []  # other data: the snapshot step fetches it


def test_chunks_fill_the_caches_and_the_snapshot_reads_them_offline(pro, tmp_path, caplog) -> None:
    pro.refuse["600519.SH"] = "您的积分不足"
    pro.refuse["000858.SZ"] = "抱歉，该代码已退市"
    plan = stages.fetch_plan(stock(tmp_path), "2")
    reports = [stages.fetch_chunk(stock(tmp_path), chunk) for chunk in plan]
    assert [(r.codes, r.fetched) for r in reports] == [(CODES[:2], 1), (CODES[2:4], 2), (CODES[4:], 0)]
    assert list(reports[0].failed) == ["600519.SH"] and list(reports[2].failed) == ["000858.SZ"]
    assert "您的积分不足" in reports[0].failed["600519.SH"]

    pro.calls.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.retraining"):
        snapshot = stages.fetch_snapshot(stock(tmp_path), reports)
    assert pro.calls == []  # offline: the chunks filled the caches
    assert snapshot.series == 3 and sorted(snapshot.failed) == ["000858.SZ", "600519.SH"]
    assert "您的积分不足" in snapshot.failed["600519.SH"]  # the chunk's reason, not "no cache"
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.retraining.stages"]
    assert len(lines) == 1 and lines[0].startswith("universe: 3 of 5 codes fetched; failed: ")
    prepared = prepare_data(stages.pinned(stages.retrain_config(stock(tmp_path))).data)
    assert snapshot.digest == prepared.digest and snapshot.rows == len(prepared.frame) == 3 * DAYS


def test_a_chunk_of_refused_codes_is_values_and_an_unreachable_one_raises(pro, tmp_path) -> None:
    pro.refuse.update({"600000.SH": "token refused", "600519.SH": "token refused"})
    refused = stages.fetch_chunk(stock(tmp_path), CODES[:2])
    assert refused.fetched == 0 and list(refused.failed) == CODES[:2]
    assert refused.failed["600000.SH"].startswith("universe: all 2 codes failed; first: 600000.SH")

    pro.unreachable |= {"601318.SH", "000001.SZ"}
    with pytest.raises(SourceUnavailable):
        stages.fetch_chunk(stock(tmp_path), CODES[2:4])  # the task's retries may get through


def test_when_every_chunk_failed_the_snapshot_fails_in_one_line(tmp_path) -> None:
    reports = [ChunkReport(codes=CODES[:2], fetched=0, failed={c: "refused" for c in CODES[:2]}),
               ChunkReport(codes=CODES[2:3], fetched=0, failed={CODES[2]: "delisted"})]
    with pytest.raises(DataError) as info:
        stages.fetch_snapshot(stock(tmp_path), reports)
    assert str(info.value) == ("universe: all 3 codes failed in 2 fetch chunk(s); first: "
                               "600000.SH (refused)")
