"""The `.gallery` file: magic, format version, a JSON header naming raw array sections, and a SHA-256 trailer.

Layout (little-endian):
    b"EDGEREID-GALLERY\\0" (17 bytes) | uint32 version | uint64 header length | header (UTF-8 JSON)
    | sections (raw C-order arrays, back to back) | SHA-256 of everything before it (32 bytes)
The header lists each section as {"name", "dtype", "shape", "offset", "nbytes"} (offset from the payload start)
plus "payload_nbytes" so a truncated file is told apart from a corrupt one.

The gallery's columns inside that container (`write_encoded` / `read_encoded`): EncodedGallery's arrays, meta as
JSON text, and header fields dim, dtype, metric, count. Layout 2 (header "layout": 2, written only by a gallery with
attributes) adds the sections "attributes" (N x A uint8 codes) and "attributes_known" (N uint8) and the header's
"attribute_names"; a file without "layout" is layout 1 and reads as a gallery without attributes. The layout
versions the columns while the container keeps version 1, so attribute-less files stay byte-identical to earlier
ones; a layout newer than this reader's is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from edgereid.atomic import replace_durably, temp_file_beside
from edgereid.errors import GalleryFileError
from edgereid.retrieval.contract import EncodedGallery

MAGIC = b"EDGEREID-GALLERY\0"
VERSION = 1
LAYOUT = 2
# the array sections of a .gallery file: EncodedGallery's field names, so save() and load() agree by construction
ENCODED_ARRAYS = ("embeddings", "scale", "ids", "cameras", "gender_prob", "times", "tracks")
_FIXED = struct.Struct("<IQ")
_DIGEST = 32


def write_gallery_file(path: str | os.PathLike, header: dict, arrays: dict) -> Path:
    """Write header + arrays atomically (temp file in the same folder, fsync, os.replace)."""
    path = Path(path)
    sections, offset = [], 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        sections.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                         "nbytes": arr.nbytes})
        offset += arr.nbytes
    head = json.dumps({**header, "sections": sections, "payload_nbytes": offset}).encode("utf-8")
    digest = hashlib.sha256()
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in (MAGIC, _FIXED.pack(VERSION, len(head)), head,
                          *(np.ascontiguousarray(a).tobytes() for a in arrays.values())):
                digest.update(chunk)
                f.write(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)  # a crash before this line leaves the previous file untouched
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_gallery_file(path: str | os.PathLike) -> tuple:
    """Return (header, {name: array}) or raise GalleryFileError naming what is wrong and what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GalleryFileError(f"cannot read gallery file {path}: {exc.strerror or exc}") from exc
    if not data.startswith(MAGIC):
        raise GalleryFileError(f"{path} is not an edgereid gallery file (no gallery magic); "
                               "create one with Gallery.save()")
    start = len(MAGIC) + _FIXED.size
    if len(data) < start:
        raise GalleryFileError(f"{path} is truncated ({len(data)} bytes, shorter than the file header)")
    version, head_len = _FIXED.unpack_from(data, len(MAGIC))
    if version != VERSION:
        raise GalleryFileError(f"{path} has gallery format version {version}, this edgereid reads version "
                               f"{VERSION}; re-create the gallery with this edgereid (or use the version that "
                               "wrote it)")
    try:
        header = json.loads(data[start:start + head_len].decode("utf-8"))
        payload_start = start + head_len
        expected = payload_start + int(header["payload_nbytes"]) + _DIGEST
    except (UnicodeDecodeError, ValueError, KeyError) as exc:
        if len(data) < start + head_len:
            raise GalleryFileError(f"{path} is truncated inside its header ({len(data)} bytes)") from exc
        raise GalleryFileError(f"{path} has a corrupt header ({exc}); restore it from a backup") from exc
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise GalleryFileError(f"{path} is {what}: {len(data)} bytes, expected {expected}; "
                               "restore it from a backup or re-create it")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise GalleryFileError(f"{path} fails its checksum (the file is corrupt); restore it from a backup")
    arrays = {}
    for s in header["sections"]:
        lo = payload_start + s["offset"]
        raw = data[lo:lo + s["nbytes"]]
        arrays[s["name"]] = np.frombuffer(raw, dtype=np.dtype(s["dtype"])).reshape(s["shape"]).copy()
    return header, arrays


def write_encoded(path: str | os.PathLike, enc: EncodedGallery) -> Path:
    """Write a gallery's stored form as a .gallery file (layout 2 when it has attributes, else layout 1)."""
    header = {"dim": enc.dim, "dtype": enc.dtype, "metric": enc.metric, "count": len(enc)}
    arrays = {name: getattr(enc, name) for name in ENCODED_ARRAYS}
    arrays["scale"] = enc.scale if enc.scale is not None else np.empty(0, dtype=np.float32)
    arrays["meta"] = np.frombuffer(json.dumps(enc.meta).encode("utf-8"), dtype=np.uint8)
    if enc.attribute_names:
        header.update(layout=LAYOUT, attribute_names=list(enc.attribute_names))
        arrays["attributes"] = enc.attributes
        arrays["attributes_known"] = np.asarray(enc.attributes_known).astype(np.uint8)
    return write_gallery_file(path, header, arrays)


def read_encoded(path: str | os.PathLike) -> tuple:
    """(header, `Gallery.from_encoded` keyword arguments) of a .gallery file; GalleryFileError when it is damaged,
    misses a section or has a newer layout."""
    header, arrays = read_gallery_file(path)
    layout = int(header.get("layout", 1))
    if layout > LAYOUT:
        raise GalleryFileError(f"{path} has gallery layout {layout}, this edgereid reads layouts up to {LAYOUT}; "
                               "upgrade edgereid to read it")
    try:
        fields = {"dim": header["dim"], "dtype": header["dtype"], "metric": header["metric"],
                  "meta": json.loads(arrays["meta"].tobytes().decode("utf-8")),
                  **{name: arrays[name] for name in ENCODED_ARRAYS}}
        if layout >= 2:
            fields.update(attributes=arrays["attributes"], attributes_known=arrays["attributes_known"].astype(bool),
                          attribute_names=tuple(header["attribute_names"]))
    except (KeyError, ValueError) as exc:
        raise GalleryFileError(f"{path} is missing gallery fields ({exc}); re-create it with Gallery.save()") from exc
    return header, fields
