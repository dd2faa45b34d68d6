"""`CameraCentring`: each camera's mean embedding, removed from every embedding of that camera.

A model trained elsewhere puts a camera's look (its light, colour cast, angle) into every embedding it makes of
that camera, so two people on one camera can sit closer than one person on two. Removing each camera's mean
embedding (measured on the site's own unlabeled crops) and normalising again takes most of that out, needs no
labels and no training, and costs one subtraction per crop at run time. The gallery and its queries must be
centred with the same file: a centred embedding is not comparable with an uncentred one.

    centring = CameraCentring.load("site/cameras.json", model=rt)
    gallery.add(centring(out.embeddings, cameras=3), cameras=3)
    hits = gallery.search(centring(query.embeddings, cameras=1))

`edgereid fit-cameras MODEL --images DIR -o cameras.json` writes the file from a folder of the site's crops.
"""
from __future__ import annotations

import os
from typing import Iterable

import numpy as np

from edgereid.atomic import read_json_file, write_json_atomic
from edgereid.datasets.site import camera_name, camera_order
from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.retrieval.distances import l2_normalize

FORMAT = "edgereid-camera-centring"
FORMAT_VERSION = 1
MIN_CROPS = 10  # below this a camera's mean is mostly its few people, not its look


def centre_per_camera(embeddings: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """Embeddings with each camera's own mean removed, L2-normalised again (unchanged with one camera): the
    transductive form, fitted and applied on the same crops."""
    cams = np.asarray(cameras)
    if len(np.unique(cams)) < 2:
        return embeddings
    out = np.asarray(embeddings, dtype=np.float32).copy()
    for c in np.unique(cams):
        out[cams == c] -= out[cams == c].mean(axis=0)
    return l2_normalize(out)


def check_camera_counts(cameras: Iterable, min_crops: int = MIN_CROPS) -> tuple:
    """(camera names, crops per camera); a camera with fewer than `min_crops` crops is an InvalidInputError."""
    names, counts = np.unique(np.array([camera_name(c) for c in cameras]), return_counts=True)
    few = [f"{c} ({n})" for c, n in zip(names, counts) if n < min_crops]
    if few:
        raise InvalidInputError(f"cameras {', '.join(few)} have fewer than {min_crops} crops, too few for a "
                                f"camera's mean appearance; collect more crops of them or leave them out.")
    return names, counts


def model_identity(metadata) -> str:
    """What a centring file is bound to: the model's weights hash (an imported network: its file's hash)."""
    return getattr(metadata, "weights_sha256", "") or getattr(metadata, "origin_sha256", "")


class CameraCentring:
    """Per-camera mean embeddings of one model on one site. Cameras are named as in crop file names ("3" for
    c3/cam3, "a" for PRID's 0001_a); integers are taken as their decimal names. A camera the file does not know
    is centred on the mean of all fitted crops (`strict=True` refuses it instead)."""

    def __init__(self, means: dict, counts: dict, model: str = "", strict: bool = False):
        if not means:
            raise InvalidInputError("a camera centring needs at least one camera's mean")
        self.means = {str(c): np.asarray(m, dtype=np.float32) for c, m in means.items()}
        dims = {m.shape for m in self.means.values()}
        if len(dims) != 1 or len(next(iter(dims))) != 1:
            raise InvalidInputError(f"camera means must be vectors of one length; got shapes {sorted(dims)}")
        self.counts = {str(c): int(n) for c, n in counts.items()}
        self.model = model
        self.strict = strict
        weights = np.array([max(self.counts.get(c, 1), 1) for c in self.means], dtype=np.float64)
        self.site_mean = (np.stack(list(self.means.values())) * weights[:, None]).sum(0) / weights.sum()
        self.site_mean = self.site_mean.astype(np.float32)

    @property
    def dim(self) -> int:
        """Embedding length the means have."""
        return int(self.site_mean.shape[0])

    @property
    def cameras(self) -> list:
        """The fitted cameras' names."""
        return camera_order(self.means)

    def __repr__(self) -> str:
        return f"CameraCentring({len(self.means)} cameras, dim {self.dim}, {sum(self.counts.values())} crops)"

    @classmethod
    def fit(cls, embeddings: np.ndarray, cameras: Iterable, model: str = "",
            min_crops: int = MIN_CROPS) -> "CameraCentring":
        """Means of `embeddings` (N, D) per camera (N names or ints); `model` names the embedding space
        (`model_identity(rt.metadata)`). A camera with fewer than `min_crops` crops is refused."""
        emb = np.asarray(embeddings, dtype=np.float32)
        cams = np.array([camera_name(c) for c in _as_list(cameras, len(emb))])
        if emb.ndim != 2 or len(emb) == 0:
            raise InvalidInputError(f"embeddings must be (N, D) with N > 0; got shape {emb.shape}")
        names, counts = check_camera_counts(cams, min_crops)
        return cls({c: emb[cams == c].mean(axis=0) for c in names}, dict(zip(names, counts.tolist())), model)

    def __call__(self, embeddings: np.ndarray, cameras) -> np.ndarray:
        """`embeddings` (N, D) centred on their cameras' means (`cameras`: one for all rows or one per row) and
        L2-normalised: the vectors to add to a gallery or search it with."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise InvalidInputError(f"embeddings must be (N, {self.dim}) for this camera centring; got shape "
                                    f"{emb.shape} (a file fitted on another model?)")
        cams = [camera_name(c) for c in _as_list(cameras, len(emb))]
        unknown = sorted(set(cams) - set(self.means))
        if unknown and self.strict:
            raise InvalidInputError(f"camera(s) {', '.join(unknown)} are not in this camera centring (it knows "
                                    f"{', '.join(self.cameras)}); fit it again with crops of them.")
        means = np.stack([self.means.get(c, self.site_mean) for c in cams]) if cams else emb[:0]
        return l2_normalize(emb - means)

    def check_model(self, metadata, where: str = "the camera centring") -> None:
        """Refuse a model other than the one the means were measured with (its embeddings live elsewhere)."""
        ident = model_identity(metadata)
        if self.model and ident and ident != self.model:
            raise ModelFileError(f"{where} was fitted on the model with weights {self.model[:12]}..., not this one "
                                 f"({ident[:12]}...); fit it again with `edgereid fit-cameras` on this model.")

    def to_dict(self) -> dict:
        """The JSON form `save` writes."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "model_sha256": self.model, "dim": self.dim,
                "cameras": {c: {"crops": self.counts.get(c, 0), "mean": [float(v) for v in self.means[c]]}
                            for c in self.cameras}}

    def save(self, path: str | os.PathLike) -> None:
        """Write the means as JSON, atomically (a crash leaves the old file or the new one)."""
        write_json_atomic(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike, model=None, strict: bool = False) -> "CameraCentring":
        """Read a file `save` wrote; with `model` (a Runtime or its metadata) refuse one fitted on another."""
        data = read_json_file(path, ModelFileError, f"{path}: no such camera centring file",
                              "write it again with `edgereid fit-cameras`")
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelFileError(f"{path} is not a camera centring file (no format {FORMAT!r}); write one with "
                                 f"`edgereid fit-cameras`.")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise ModelFileError(f"{path} has format version {data['format_version']}; this edgereid reads "
                                 f"{FORMAT_VERSION}: upgrade edgereid.")
        try:
            cams = data["cameras"]
            means = {c: np.asarray(v["mean"], dtype=np.float32) for c, v in cams.items()}
            counts = {c: int(v["crops"]) for c, v in cams.items()}
            bad = [c for c, m in means.items() if m.shape != (int(data["dim"]),) or not np.isfinite(m).all()]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(f"{path} is a damaged camera centring file ({exc!r}); fit it again.") from exc
        if bad or not means:
            raise ModelFileError(f"{path}: the means of camera(s) {', '.join(bad) or '(none)'} do not match the "
                                 f"file's dim {data.get('dim')} or are not finite; fit it again.")
        centring = cls(means, counts, str(data.get("model_sha256", "")), strict=strict)
        if model is not None:
            centring.check_model(getattr(model, "metadata", model), where=str(path))
        return centring


def _as_list(cameras, n: int) -> list:
    """One camera per row: a scalar is repeated, a sequence must have n entries."""
    if isinstance(cameras, (str, int, np.integer)):
        return [cameras] * n
    cams = list(np.asarray(cameras).tolist()) if isinstance(cameras, np.ndarray) else list(cameras)
    if len(cams) != n:
        raise InvalidInputError(f"cameras has {len(cams)} entries for {n} embeddings; give one per row or one "
                                f"for all.")
    return cams
