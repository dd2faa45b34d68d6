"""Atomic writes: nothing half-written on failure, and outputs get the umask's mode (not tempfile's private one)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from conftest import make_crops
from edgereid.atomic import atomic_path, temp_dir_beside, write_bytes_atomic, write_json_atomic
from edgereid.metadata import ModelMetadata
from edgereid.retrieval.gallery_format import write_gallery_file


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_and_folders_get_the_umask_mode(tmp_path, umask_022):
    from edgereid.calibration.calibset import build_calibration_set

    assert mode(write_bytes_atomic(tmp_path / "model.onnx", b"x")) == 0o644
    assert mode(write_json_atomic(tmp_path / "a" / "report.json", {"k": 1})) == 0o644
    assert mode(write_gallery_file(tmp_path / "site.gallery", {"v": 1}, {"e": np.zeros((2, 4), np.float32)})) == 0o644
    assert mode(temp_dir_beside(tmp_path / "out")) == 0o755
    calib = build_calibration_set(make_crops(4), ModelMetadata(height=32, width=16), tmp_path / "calib", num=4,
                                  progress=False)
    assert mode(calib.folder) == 0o755 and all(mode(f) == 0o644 for f in calib.folder.iterdir())


def test_a_stricter_umask_is_respected(tmp_path):
    old = os.umask(0o077)
    try:
        assert mode(write_bytes_atomic(tmp_path / "secret.bin", b"x")) == 0o600
    finally:
        os.umask(old)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_bytes_atomic(tmp_path / "m.onnx", b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells files from folders through /proc (Linux)")
def test_a_published_folder_is_on_disk_before_and_after_its_rename(tmp_path, monkeypatch):
    from edgereid import atomic

    tmp = temp_dir_beside(tmp_path / "calib")
    (tmp / "sub").mkdir()
    for name in ("a.npy", "sub/b.npy", "manifest.json"):
        (tmp / name).write_bytes(b"x")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def record(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", os.path.relpath(target, tmp_path)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", os.path.basename(b))),
                                                     real_replace(a, b)))
    atomic.publish_dir_durably(tmp, tmp_path / "calib")
    rel = tmp.name
    synced_before = {t for e, t in events[:events.index(("rename", "calib"))] if e == "fsync"}
    assert synced_before == {f"{rel}/a.npy", f"{rel}/sub/b.npy", f"{rel}/manifest.json", f"{rel}/sub", rel}
    assert events[-1] == ("fsync", ".")  # the rename itself, through the parent folder
    assert (tmp_path / "calib" / "sub" / "b.npy").read_bytes() == b"x" and not tmp.exists()
