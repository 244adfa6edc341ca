"""The cache of fetched frames: atomic writes, offline use, fallbacks and corrupt files.

A fake network source stands in for tushare here (its own tests are in test_data_tushare.py):
it counts its calls and can be told to be unreachable.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from pipeline.config import DataConfig
from pipeline.data import cache
from pipeline.data.loading import load_data
from pipeline.data.sources import SOURCES, SourceInfo, SourceUnavailable, source_info
from pipeline.errors import DataError, DataUnavailable

NAME = "unit_net"


class FakeNetworkSource:
    def __init__(self) -> None:
        self.calls = 0
        self.unreachable = False
        self.close = np.linspace(10.0, 20.0, 40)

    def __call__(self, params) -> pd.DataFrame:
        self.calls += 1
        if self.unreachable:
            raise SourceUnavailable(f"{NAME}: cannot reach the server (ConnectionError)")
        dates = pd.date_range("2024-01-01", periods=len(self.close), freq="D")
        return pd.DataFrame({"date": dates.strftime("%Y-%m-%d"), "close": self.close})


@pytest.fixture
def network(monkeypatch) -> FakeNetworkSource:
    fake = FakeNetworkSource()
    source_info("sine")  # registers the built-in sources first
    monkeypatch.setitem(SOURCES, NAME, SourceInfo(name=NAME, fn=fake, cached=True, network=True,
                                                  hint="check the fake server"))
    return fake


def config(tmp_path, **overrides) -> DataConfig:
    """The typed data config of the fake source (not a registered config group, so built here:
    what load_config would hand the stage)."""
    fields = {"name": "unit", "source": NAME, "params": {"series": "close", "end": None},
              "date_column": "date", "inputs": ["close"], "targets": ["close"], "positive": True,
              "cache_dir": str(tmp_path / "cache"), "offline": False, "refresh": False}
    fields.update(overrides)
    return DataConfig(**fields)


def slot(tmp_path) -> cache.CacheSlot:
    return cache.cache_slot(tmp_path / "cache", NAME, config(tmp_path).params)


def cache_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def age_cache(tmp_path, days: int = 1) -> None:
    """Pretend the cache was fetched `days` ago (a range up to today is then stale)."""
    path = slot(tmp_path).manifest_path
    manifest = json.loads(path.read_text())
    then = datetime.now(timezone.utc) - timedelta(days=days)
    manifest["fetched_at"] = then.isoformat(timespec="seconds")
    path.write_text(json.dumps(manifest))


def test_first_fetch_writes_parquet_and_manifest_then_reads_the_cache(tmp_path, network) -> None:
    first = load_data(config(tmp_path))
    assert not first.from_cache and network.calls == 1
    manifest = json.loads(slot(tmp_path).manifest_path.read_text())
    assert manifest["source"] == NAME and manifest["params"] == {"series": "close", "end": None}
    assert manifest["rows"] == 40 and manifest["data_file"] == first.cache_path.name
    datetime.fromisoformat(manifest["fetched_at"])
    assert cache_files(tmp_path) == sorted([first.cache_path.name, slot(tmp_path).manifest_path.name])

    second = load_data(config(tmp_path))
    assert second.from_cache and network.calls == 1  # fetched today: no second request
    assert second.digest == first.digest  # the dataset identity survives the Parquet round trip
    pd.testing.assert_frame_equal(second.frame, first.frame)


def test_a_failed_write_keeps_the_old_cache_and_leaves_no_temporary_file(tmp_path, network,
                                                                         monkeypatch) -> None:
    good = load_data(config(tmp_path))
    before = cache_files(tmp_path)

    def half_written(frame, path):
        path.write_bytes(b"PAR1 partial")
        raise OSError("disk full")

    network.close = network.close + 1  # the refetch brings different data
    monkeypatch.setattr(cache, "write_parquet", half_written)
    with pytest.raises(OSError, match="disk full"):
        load_data(config(tmp_path, refresh=True))
    assert cache_files(tmp_path) == before
    kept = cache.load(slot(tmp_path))
    assert kept is not None and cache.frame_digest(kept.frame) == kept.manifest["digest"]
    assert load_data(config(tmp_path, offline=True)).digest == good.digest


def test_a_failed_manifest_write_keeps_the_old_pair(tmp_path, network, monkeypatch) -> None:
    good = load_data(config(tmp_path))
    before = cache_files(tmp_path)
    network.close = network.close * 2

    def interrupted(text, path):
        path.write_text(text[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_data(config(tmp_path, refresh=True))
    assert cache_files(tmp_path) == before
    assert load_data(config(tmp_path, offline=True)).digest == good.digest


def test_offline_trains_from_the_cache_and_says_so(tmp_path, network, caplog) -> None:
    load_data(config(tmp_path))
    age_cache(tmp_path, days=30)
    network.unreachable = True
    with caplog.at_level(logging.WARNING):
        result = load_data(config(tmp_path, offline=True))
    assert result.from_cache and network.calls == 1  # offline: the source is never called
    assert result.notice.startswith(f"{NAME}: data.offline=true; training from the cache fetched ")
    assert result.notice in caplog.text


def test_offline_without_a_cache_is_one_line(tmp_path, network) -> None:
    with pytest.raises(DataUnavailable) as info:
        load_data(config(tmp_path, offline=True))
    message = str(info.value)
    assert "\n" not in message and network.calls == 0
    assert message.startswith(f"{NAME}: data.offline=true but there is no cache at ")
    assert 'make fetch ARGS="data=unit"' in message and "data=csv" in message


def test_a_network_failure_falls_back_to_a_stale_cache(tmp_path, network, caplog) -> None:
    good = load_data(config(tmp_path))
    age_cache(tmp_path)
    network.unreachable = True
    with caplog.at_level(logging.WARNING):
        result = load_data(config(tmp_path))
    assert network.calls == 2  # the stale cache made it try the network first
    assert result.from_cache and result.digest == good.digest
    assert result.notice.startswith(f"{NAME}: cannot reach the server (ConnectionError); "
                                    "training from the cache fetched ")
    assert "training from the cache" in caplog.text


def test_no_cache_and_no_network_says_which_source_why_and_how_to_fix(tmp_path, network) -> None:
    network.unreachable = True
    with pytest.raises(DataUnavailable) as info:
        load_data(config(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{NAME}: cannot reach the server (ConnectionError); no cache at ")
    assert "to fix: check the fake server, run `make fetch ARGS=\"data=unit\"` where there is a " \
           "network" in message
    assert "data=csv" in message
    assert not (tmp_path / "cache").exists()


def test_a_corrupt_cache_is_refetched_when_online(tmp_path, network, caplog) -> None:
    good = load_data(config(tmp_path))
    good.cache_path.write_bytes(b"this is not parquet")
    with caplog.at_level(logging.WARNING):
        result = load_data(config(tmp_path))
    assert "is not readable Parquet" in caplog.text and "fetching again" in caplog.text
    assert not result.from_cache and network.calls == 2 and result.digest == good.digest
    assert cache.load(slot(tmp_path)) is not None  # repaired


@pytest.mark.parametrize("damage,expected", [
    ("parquet", "is not readable Parquet"),
    ("digest", "does not match its manifest"),
    ("manifest", "is unreadable"),
])
def test_a_corrupt_cache_offline_is_one_line(tmp_path, network, damage, expected) -> None:
    good = load_data(config(tmp_path))
    manifest_path = slot(tmp_path).manifest_path
    if damage == "parquet":
        good.cache_path.write_bytes(good.cache_path.read_bytes()[:100])
    elif damage == "digest":
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps({**manifest, "digest": "0" * 16}))
    else:
        manifest_path.write_text("{not json")
    with pytest.raises(DataUnavailable) as info:
        load_data(config(tmp_path, offline=True))
    message = str(info.value)
    assert "\n" not in message and expected in message
    assert message.startswith(f"{NAME}: data.offline=true but cache ")


def test_bad_data_is_never_cached(tmp_path, network) -> None:
    good = load_data(config(tmp_path))
    before = cache_files(tmp_path)
    network.close = network.close.copy()
    network.close[5] = -1.0  # a non-positive price
    with pytest.raises(DataError, match=r"non-positive price -1.0 at 2024-01-06") as info:
        load_data(config(tmp_path, refresh=True))
    assert not isinstance(info.value, DataUnavailable)  # bad data is a failure, never skippable
    assert cache_files(tmp_path) == before
    assert load_data(config(tmp_path)).digest == good.digest


def test_nothing_is_written_when_the_first_fetch_is_bad(tmp_path, network) -> None:
    network.close = np.full(40, np.nan)
    with pytest.raises(DataError, match="NaN value") as info:
        load_data(config(tmp_path))
    assert not isinstance(info.value, DataUnavailable)
    assert not (tmp_path / "cache").exists() or cache_files(tmp_path) == []


def test_a_closed_date_range_never_goes_stale() -> None:
    fetched = datetime(2024, 6, 1, tzinfo=timezone.utc)
    cached = cache.CachedFrame(frame=pd.DataFrame(), manifest={"fetched_at": fetched.isoformat()},
                               path=None)
    later = date(2025, 1, 1)
    assert cache.is_fresh(cached, {"end": "2024-05-31"}, today=later)
    assert not cache.is_fresh(cached, {"end": "2024-06-30"}, today=later)  # ended after the fetch
    assert not cache.is_fresh(cached, {"end": None}, today=later)
    assert cache.is_fresh(cached, {"end": None}, today=date(2024, 6, 1))


def test_cache_files_take_the_umask_mode_so_shared_workers_can_read_them(tmp_path) -> None:
    """mkstemp's 0600 would lock the other workers of a DAG out of the cache they share."""
    import os
    import stat

    old = os.umask(0o002)  # a group-shared deployment
    try:
        cache._UMASK, saved = 0o002, cache._UMASK
        slot = cache.cache_slot(tmp_path / "cache", "sst", {"column": "sst"})
        stored = cache.store(slot, pd.DataFrame({"v": [1.0, 2.0]}), "sst", {"column": "sst"})
    finally:
        cache._UMASK = saved
        os.umask(old)
    for path in (stored.path, slot.manifest_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path
