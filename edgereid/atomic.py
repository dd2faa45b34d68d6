"""Atomic file writes: a temp file in the same folder, fsync, os.replace, fsync of the folder.

Ctrl-C or kill -9 never leaves half a file, and a power cut after a write returned keeps the new file (the
data and the rename are both on disk). Temp names are `.<target name>.<12 hex>.tmp`; the next write to the same
target removes leftovers of an interrupted one (older than STALE_AFTER seconds, so a concurrent writer's live
temp file is left alone).

Temp files and folders get the mode a plain open()/mkdir() would give (0666/0777 less the umask), not
tempfile's private 0600/0700, so a model, gallery or calibration set stays readable by the service that
deploys it.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


STALE_AFTER = 60.0  # seconds; a temp file untouched this long belongs to a write that died


def fsync_dir(folder: str | os.PathLike) -> None:
    """fsync a folder so a rename or a new file in it survives a power cut (no-op where folders can't be opened)."""
    if os.name == "nt":  # Windows cannot open a folder for fsync; NTFS journals the rename itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """fsync a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under `folder`, then each folder bottom-up, so a tree about to be renamed into place is on
    disk first (a power cut after the rename must not leave empty or short files under a complete-looking name)."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def publish_dir_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename a fully written temp folder to `path` (which must not exist) with its contents and the rename on disk."""
    fsync_tree(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """os.replace(tmp, path), then fsync the folder so the rename is on disk; `tmp` must already be fsynced."""
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def remove_stale_temps(path: str | os.PathLike, now: float | None = None) -> list:
    """Delete temp files/folders of interrupted writes to `path` (its temp pattern, older than STALE_AFTER)."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{12}}\.tmp$")
    cutoff = (time.time() if now is None else now) - STALE_AFTER
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for e in entries:
        if not pattern.match(e.name):
            continue
        try:
            if e.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.remove(e.path)
            removed.append(Path(e.path))
        except FileNotFoundError:  # another writer cleaned it first
            continue
    return removed


def _create_beside(path: Path, create: Callable[[Path], Any]) -> tuple:
    """(create(tmp), tmp) for an unused hidden name beside `path`; `create` must fail if the name exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return create(tmp), tmp
        except FileExistsError:
            continue


def temp_file_beside(path: str | os.PathLike) -> tuple[int, Path]:
    """(fd open for writing, temp path) for a new file in `path`'s folder, created with the umask's mode."""
    return _create_beside(Path(path), lambda tmp: os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def temp_dir_beside(path: str | os.PathLike) -> Path:
    """A new empty folder in `path`'s folder, created with the umask's mode, to be renamed into `path`."""
    return _create_beside(Path(path), lambda tmp: tmp.mkdir(0o777))[1]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` (fsynced, folder too) only if the block succeeds."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)
        replace_durably(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(data))
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write JSON atomically (non-JSON values such as paths are written with str())."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=str))


def read_json_file(path: str | os.PathLike, error: type, missing: str, fix: str) -> Any:
    """The read side of write_json_atomic: the parsed file, or `error(missing)` when it is absent and
    `error("<path> is not valid JSON (...); <fix>.")` when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise error(missing)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path} is not valid JSON ({exc}); {fix}.") from exc
