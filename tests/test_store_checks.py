"""A tracking store the training could not use is refused in one line, before any training."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import TrackingError
from pipeline.tracking.store import open_store
from tests.conftest import TINY, free_port, run_cli


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("uri", ["foo://bar/x", "mlflow.db", "s3://bucket/mlflow"])
def test_unknown_scheme_names_the_uri_and_what_works(uri) -> None:
    with pytest.raises(TrackingError) as exc_info:
        open_store(uri).check()
    message = _one_line(exc_info)
    assert uri in message and "sqlite:///" in message and "http(s)://" in message


def test_sqlite_file_in_a_missing_directory_is_refused_and_not_created(tmp_path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(TrackingError) as exc_info:
        open_store(f"sqlite:///{missing}/mlflow.db").check()
    message = _one_line(exc_info)
    assert str(missing) in message and "does not exist" in message
    assert not (tmp_path / "no").exists()  # MLflow alone would have created it


def test_credentials_never_appear_in_the_message() -> None:
    port = free_port()
    with pytest.raises(TrackingError) as exc_info:
        open_store(f"http://alice:s3cret-pw@127.0.0.1:{port}").check()
    message = _one_line(exc_info)
    assert "s3cret-pw" not in message and "alice" not in message
    assert f"http://***@127.0.0.1:{port}" in message and "unreachable" in message


def _make_read_only(folder: Path) -> bool:
    """0555, and immutable where we are root (root writes through permission bits)."""
    folder.chmod(0o555)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return True
    (folder / "probe").unlink()
    return False


def _undo_read_only(folder: Path) -> None:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


def test_read_only_artifact_root_is_refused(tmp_path) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    try:
        if not _make_read_only(root):
            pytest.skip("cannot make a directory read-only for this user here")
        with pytest.raises(TrackingError) as exc_info:
            open_store(f"sqlite:///{tmp_path}/mlflow.db", str(root)).check()
        message = _one_line(exc_info)
        assert "tracking.artifact_root" in message and "not writable" in message
    finally:
        _undo_read_only(root)


def test_artifact_root_below_a_file_is_refused(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrackingError) as exc_info:
        open_store(f"sqlite:///{tmp_path}/mlflow.db", str(blocker / "artifacts")).check()
    assert "is a file, not a directory" in _one_line(exc_info)


def test_a_good_sqlite_store_passes_and_is_created(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "mlartifacts"))
    store.check()
    assert (tmp_path / "mlflow.db").is_file()
    experiment = store.experiment("checks")
    location = store.client.get_experiment(experiment).artifact_location
    assert location == (tmp_path / "mlartifacts" / "checks").resolve().as_uri()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["scheme", "missing_dir", "read_only_root"])
def test_train_refuses_a_bad_store_in_one_line_before_training(tmp_path, case) -> None:
    uri, extra, root = f"sqlite:///{tmp_path}/mlflow.db", [], None
    if case == "scheme":
        uri = "foo://nowhere"
    elif case == "missing_dir":
        uri = f"sqlite:///{tmp_path}/missing/mlflow.db"
    else:
        root = tmp_path / "ro"
        root.mkdir()
        if not _make_read_only(root):
            pytest.skip("cannot make a directory read-only for this user here")
        extra = [f"tracking.artifact_root={root}"]
    try:
        done = run_cli([*TINY, f"tracking.uri={uri}", *extra], cwd=tmp_path)
    finally:
        if root is not None:
            _undo_read_only(root)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "Epoch" not in done.stdout + done.stderr  # no training started
    assert not (tmp_path / "missing").exists()
