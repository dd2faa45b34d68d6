"""Named files fetched once into edgereid's cache folder and checked against their published SHA-256.

The only place edgereid downloads anything, and only when a user names a file (`--pretrained resnet18`): the
file streams into a temp file beside its final name while its SHA-256 is computed, is fsynced, checked, and only
then renamed into place (`edgereid.atomic`), so an interrupted or wrong download never leaves a file under the
final name. A cached file is re-hashed before every use. Offline, or on a hash mismatch, a `WeightsDownloadError`
names the URL, the file and the exact path where a copy fetched by hand is picked up.

The cache root is `$EDGEREID_HOME` (default `~/.cache/edgereid`); weights live in `<root>/weights/<file name>`.
Standard library only (urllib, hashlib): no torch, no requests.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edgereid.atomic import fsync_dir, temp_file_beside
from edgereid.errors import WeightsDownloadError
from edgereid.progress import progress

HOME_ENV = "EDGEREID_HOME"
CHUNK = 1 << 20  # bytes read and hashed per step
_HEX = re.compile(r"^[0-9a-f]{8,64}$")


def cache_root() -> Path:
    """edgereid's cache folder: `$EDGEREID_HOME` when set, else `~/.cache/edgereid`."""
    home = os.environ.get(HOME_ENV, "").strip()
    return Path(home).expanduser() if home else Path.home() / ".cache" / "edgereid"


def weights_dir() -> Path:
    """Where named weights files are kept: `<cache_root()>/weights`."""
    return cache_root() / "weights"


@dataclass(frozen=True)
class RemoteFile:
    """A file edgereid may download when a user names it: where it comes from and what its bytes hash to.

    `sha256` is the full 64-hex-digit SHA-256 of the file, or, where the publisher states only that, the leading
    hex digits of it (at least 8; torchvision and IBN-Net put the first 8 in the file name, and torch.hub checks
    exactly that prefix). `full_digest` says which one a check is against.
    """

    url: str
    file_name: str
    sha256: str
    description: str = ""

    def __post_init__(self) -> None:
        if not _HEX.match(self.sha256):
            raise ValueError(f"{self.file_name}: sha256 must be 8 to 64 lowercase hex digits, got {self.sha256!r}")
        if not self.file_name or Path(self.file_name).name != self.file_name:
            raise ValueError(f"file_name must be a plain file name, got {self.file_name!r}")

    @property
    def full_digest(self) -> bool:
        """True when `sha256` is the whole digest, False when it is the publisher's prefix of it."""
        return len(self.sha256) == 64

    def matches(self, digest: str) -> bool:
        """Whether a file's full SHA-256 `digest` is the published one (or starts with the published prefix)."""
        return digest == self.sha256 if self.full_digest else digest.startswith(self.sha256)

    def expected(self) -> str:
        """The hash as a sentence fragment for messages."""
        return (f"SHA-256 {self.sha256}" if self.full_digest
                else f"a SHA-256 starting with {self.sha256} (the publisher gives only this prefix)")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _by_hand(remote: RemoteFile, dest: Path) -> str:
    return (f"To place it by hand, download {remote.url} on a machine with network, check that it has "
            f"{remote.expected()}, and copy it to {dest} (or set {HOME_ENV} to a folder whose weights/ "
            f"subfolder holds it); edgereid then uses it without downloading.")


def fetch(remote: RemoteFile, folder: str | os.PathLike | None = None, timeout: float = 60.0,
          show_progress: bool = True) -> Path:
    """The verified local copy of `remote` in `folder` (default `weights_dir()`), downloading it once.

    A file already there is re-hashed and used when it matches; one that does not is refused (never replaced
    silently). A download streams into a temp file beside the final name and is renamed into place only when all
    announced bytes arrived and the hash matches; otherwise the temp file is removed and nothing is left.
    Raises WeightsDownloadError (offline, server error, short read, hash mismatch) naming the URL, the file and
    where to place it by hand.
    """
    folder = Path(folder) if folder is not None else weights_dir()
    dest = folder / remote.file_name
    if dest.is_file():
        digest = sha256_file(dest)
        if remote.matches(digest):
            return dest
        raise WeightsDownloadError(
            f"the cached {remote.file_name} at {dest} has SHA-256 {digest}, but {remote.url} is published with "
            f"{remote.expected()}: the copy is corrupt or a different file. Delete {dest} and run again to "
            f"download it anew. {_by_hand(remote, dest)}")
    try:
        fd, tmp = temp_file_beside(dest)
    except OSError as exc:
        raise WeightsDownloadError(f"cannot write into the cache folder {folder} ({exc}); set {HOME_ENV} to a "
                                   f"writable folder. {_by_hand(remote, dest)}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            digest, received, announced = _download(remote, dest, out, timeout, show_progress)
            out.flush()
            os.fsync(out.fileno())
        if announced is not None and received != announced:
            raise WeightsDownloadError(
                f"the download of {remote.file_name} from {remote.url} stopped after {received} of {announced} "
                f"bytes (connection closed); nothing was kept. Run again, or place it by hand. "
                f"{_by_hand(remote, dest)}")
        if not remote.matches(digest):
            raise WeightsDownloadError(
                f"refused {remote.file_name} downloaded from {remote.url}: its SHA-256 is {digest}, the published "
                f"one is {remote.expected()}; nothing was kept. {_by_hand(remote, dest)}")
        os.replace(tmp, dest)
        fsync_dir(folder)
    except WeightsDownloadError:
        raise
    except OSError as exc:  # the disk side: full, read-only, removed under us
        raise WeightsDownloadError(f"could not write {remote.file_name} into {folder} ({exc}); free space or set "
                                   f"{HOME_ENV} to another folder. {_by_hand(remote, dest)}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _download(remote: RemoteFile, dest: Path, out, timeout: float, show_progress: bool) -> tuple:
    """Stream `remote.url` into the open file `out`; (sha256 hex, bytes received, Content-Length or None)."""
    digest, received, announced = hashlib.sha256(), 0, None
    request = urllib.request.Request(remote.url, headers={"User-Agent": "edgereid"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            announced = int(length) if length and length.isdigit() else None
            bar = progress(total=announced, desc=f"downloading {remote.file_name}", unit="B",
                           enabled=show_progress)
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    digest.update(block)
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            finally:
                bar.close()
    except urllib.error.HTTPError as exc:
        raise WeightsDownloadError(f"could not download {remote.file_name}: {remote.url} answered HTTP "
                                   f"{exc.code} {exc.reason}. {_by_hand(remote, dest)}") from exc
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsDownloadError(f"could not download {remote.file_name} from {remote.url} ({reason}): no "
                                   f"network, or the server cannot be reached. {_by_hand(remote, dest)}") from exc
    return digest.hexdigest(), received, announced
