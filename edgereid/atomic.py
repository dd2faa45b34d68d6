"""Atomic file writes: a temp file in the same folder, then os.replace, so Ctrl-C never leaves half a file.

Temp files and folders get the mode a plain open()/mkdir() would give (0666/0777 less the umask), not
tempfile's private 0600/0700, so a model, gallery or calibration set stays readable by the service that
deploys it.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def _create_beside(path: Path, create: Callable[[Path], Any]) -> tuple:
    """(create(tmp), tmp) for an unused hidden name beside `path`; `create` must fail if the name exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    """Yield a temp path beside `path`; it replaces `path` only if the block finishes without error."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
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
