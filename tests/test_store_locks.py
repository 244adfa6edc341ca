"""Locks on a tracking store: private to the user, never followed through a link, one per store
whatever the spelling of its URI (issue 19)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.errors import TrackingError
from pipeline.tracking import locks
from pipeline.tracking.store import canonical_key, open_store


@pytest.fixture
def state_home(private_state: Path) -> Path:
    """The per-test XDG_STATE_HOME conftest sets."""
    return private_state


def test_sqlite_spellings_of_one_store_have_one_key_and_one_lock(tmp_path, monkeypatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    spellings = ["sqlite:///real/m.db", f"sqlite:///{real}/m.db", f"sqlite:///{tmp_path}/alias/m.db",
                 f"sqlite:///{real}/../real/m.db"]
    assert {canonical_key(s) for s in spellings} == {f"sqlite:///{real.resolve()}/m.db"}

    first, other = open_store(spellings[0]), open_store(spellings[2])
    with first.lock("promote:m", "test"):
        with pytest.raises(TrackingError, match="held"):
            with other.lock("promote:m", "test", timeout_s=0.2):
                pass
    with other.lock("promote:m", "test", timeout_s=0.2):  # released: free for every spelling
        pass


def test_server_spellings_share_a_key_and_credentials_are_not_part_of_it() -> None:
    spellings = ["http://127.0.0.1:5000", "http://127.0.0.1:5000/", "HTTP://127.0.0.1:5000",
                 "http://me:secret@127.0.0.1:5000", "http://127.0.0.1:5000/?x=1"]
    assert {canonical_key(s) for s in spellings} == {"http://127.0.0.1:5000"}
    assert canonical_key("https://Tracking.Example.org:443/mlflow/") == "https://tracking.example.org/mlflow"
    # different stores stay apart
    assert canonical_key("http://127.0.0.1:5001") != canonical_key("http://127.0.0.1:5000")
    assert locks.lock_path(canonical_key("http://127.0.0.1:5001"), "promote:m") != \
        locks.lock_path(canonical_key("http://127.0.0.1:5000"), "promote:m")


def _plant_link(store_uri: str, tmp_path: Path) -> tuple[Path, Path]:
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    link = locks.lock_path(canonical_key(store_uri), "promote:m")
    link.symlink_to(target)
    return link, target


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    link, target = _plant_link(store.uri, tmp_path)
    before = os.stat(target)
    with pytest.raises(TrackingError, match="symbolic link"):
        with store.lock("promote:m", "test", timeout_s=1):
            pytest.fail("the lock was taken through a link")
    assert target.read_text() == "precious\n"
    assert os.stat(target).st_mtime_ns == before.st_mtime_ns
    assert link.is_symlink()  # left for the user to look at, not silently replaced


def test_a_link_planted_after_the_check_is_not_opened_through(tmp_path, monkeypatch) -> None:
    """The race the up-front check cannot close: filelock opens the file without following."""
    store = open_store(f"sqlite:///{tmp_path}/m.db")
    link, target = _plant_link(store.uri, tmp_path)
    real_refuse = locks.refuse_link
    # pretend the link appeared just after the check: only the open itself can catch it now
    monkeypatch.setattr(locks, "refuse_link",
                        lambda path, planted=False: real_refuse(path, planted) if planted else None)
    with pytest.raises(TrackingError, match="symbolic link"):
        with store.lock("promote:m", "test", timeout_s=1):
            pytest.fail("the lock was taken through a link")
    assert target.read_text() == "precious\n"


def test_the_lock_directory_is_private(state_home) -> None:
    folder = locks.user_dir("locks")
    base = state_home / locks.APP
    assert folder.parent == base
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o700

    base.chmod(0o755)  # widened by someone: narrowed again on the next use
    locks.user_dir("locks")
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o700


def test_a_base_directory_that_is_a_link_is_refused(state_home, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state_home.mkdir()
    (state_home / locks.APP).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(TrackingError, match="not a plain directory"):
        locks.user_dir("locks")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_a_base_directory_of_another_user_is_refused(state_home) -> None:
    base = state_home / locks.APP
    base.mkdir(parents=True, mode=0o700)
    os.chown(base, 12345, 12345)
    with pytest.raises(TrackingError, match="another user"):
        locks.user_dir("locks")
