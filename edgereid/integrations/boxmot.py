"""edgereid as the appearance model of boxmot's trackers: `AppearanceModel` (any edgereid model file, any backend)
and `make_tracker`, which builds a boxmot tracker around it. boxmot is imported only by `make_tracker`.

    appearance = AppearanceModel("model.int8.onnx", threads=2)
    tracker = make_tracker("botsort", appearance)
    tracks = tracker.update(dets, frame)          # dets N x 6: x1, y1, x2, y2, conf, class; frame BGR uint8
    emb, gender = appearance.features_of(dets[:, :4], frame)   # the rows the tracker just used, no second pass
"""
from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np

from edgereid._optional import require
from edgereid.errors import InvalidInputError, MissingDependencyError
from edgereid.runtime.runtime import Runtime

# boxmot tracker name -> class; these take an appearance model (ByteTrack, OC-SORT and SFSORT are motion only).
TRACKERS = {"botsort": "BotSort", "strongsort": "StrongSort", "deepocsort": "DeepOcSort",
            "boosttrack": "BoostTrack", "hybridsort": "HybridSort", "occluboost": "OccluBoost"}
MOTION_ONLY = ("bytetrack", "ocsort", "sfsort")
# The oldest boxmot whose trackers take a pre-built ReID model as `reid_model=` (checked in 20.0.0, 23.0.0 and
# 25.0.0; 16.x built its own backend from `reid_weights`). Tested with 25.0.0.
MIN_BOXMOT = (20, 0)
EMPTY_POLICIES = ("black", "error")


def pixel_boxes(boxes: np.ndarray, frame_hw: tuple) -> np.ndarray:
    """xyxy float boxes -> int64 pixel boxes rounded to the nearest pixel and clipped to the frame (as boxmot's own
    ReID backends cut crops); a box with nothing inside the frame comes out with x1 <= x0 or y1 <= y0."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    px = np.rint(np.asarray(boxes, dtype=np.float64)[:, :4]).astype(np.int64)
    px[:, [0, 2]] = np.clip(px[:, [0, 2]], 0, w)
    px[:, [1, 3]] = np.clip(px[:, [1, 3]], 0, h)
    return px


def _check_image(image: object) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        what = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidInputError(f"get_features needs the frame as a uint8 HxWx3 BGR array (as cv2.imread or "
                                f"cv2.VideoCapture give it), got a {what}.")
    return image


def _check_boxes(boxes: object) -> np.ndarray:
    xyxy = np.asarray(boxes, dtype=np.float64)
    if xyxy.size == 0:
        return np.zeros((0, 4), np.float64)
    if xyxy.ndim != 2 or xyxy.shape[1] < 4:
        raise InvalidInputError(f"boxes must be an N x 4 array of x1, y1, x2, y2 frame pixels (N x 6 detections "
                                f"are fine too), got shape {xyxy.shape}.")
    bad = np.flatnonzero(~np.isfinite(xyxy[:, :4]).all(axis=1))
    if bad.size:
        raise InvalidInputError(f"box #{int(bad[0])} is {xyxy[bad[0], :4].tolist()}: coordinates must be finite.")
    return xyxy[:, :4]


class AppearanceModel:
    """An edgereid model as a boxmot ReID model: `get_features(boxes, image)` -> (N, D) float32 L2-normalised.

    `model` is a model file (any that `Runtime` opens, with `runtime_options` such as backend=, threads=,
    max_batch=) or an open `Runtime` to share between cameras; use one AppearanceModel per tracker, since its
    `last_*` attributes describe that tracker's last frame. Boxes are rounded to the nearest pixel and clipped to
    the frame, as boxmot's own ReID backends do. A box with no pixel left inside the frame gets, with
    `empty="black"` (the default), the embedding of an all-black crop (what boxmot's own backends give it: a finite
    unit row, since boxmot's trackers stop on a NaN or zero row), gender probability NaN and `last_valid` False;
    `empty="error"` raises InvalidInputError naming the box instead. After each call `last_gender_prob` holds the
    gender probabilities of the same crops (from the same model pass), and for a model with an attribute head
    `last_attributes` their (N, A) attribute probabilities, columns `attribute_names`, NaN rows for empty boxes
    (None for a model without one). A model without a gender head (an imported re-ID network) leaves
    `last_gender_prob` None.
    """

    def __init__(self, model: str | os.PathLike | Runtime, *, empty: str = "black", **runtime_options) -> None:
        if empty not in EMPTY_POLICIES:
            raise InvalidInputError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
        if isinstance(model, Runtime):
            if runtime_options:
                raise InvalidInputError(f"runtime options {sorted(runtime_options)} were given with an open Runtime; "
                                        f"set them when creating the Runtime, or pass the model path instead.")
            self.runtime, self._owns_runtime = model, False
        else:
            self.runtime, self._owns_runtime = Runtime(model, **runtime_options), True
        meta = self.runtime.metadata
        self.dim = int(meta.embedding_dim)
        self.gender_positive_class = meta.gender_positive_class
        self.has_gender = meta.has_gender  #: False: `last_gender_prob` is None (an imported re-ID network)
        self.attribute_names = meta.attribute_names  #: columns of `last_attributes`; () without an attribute head
        self.empty = empty
        self.calls = 0  #: get_features calls so far (a tracker that uses this model raises it every frame)
        self._black_row: np.ndarray | None = None
        self._last_image: np.ndarray | None = None
        self._set_last(np.zeros((0, 4)), np.zeros((0, 4), np.int64), np.zeros((0, self.dim), np.float32),
                       np.zeros(0, np.float32) if self.has_gender else None, np.zeros(0, bool),
                       self._empty_attributes(0))

    def _empty_attributes(self, n: int) -> np.ndarray | None:
        """(n, A) NaN rows (filled for the boxes that get a crop), or None for a model without attributes."""
        return np.full((n, len(self.attribute_names)), np.nan, np.float32) if self.attribute_names else None

    def _set_last(self, boxes, pixels, embeddings, gender, valid, attributes=None) -> None:
        self.last_boxes = boxes            #: the boxes of the last call as given (N x 4 float64)
        self.last_pixel_boxes = pixels     #: the pixel boxes cut from the frame (x0, y0, x1, y1), int64
        self.last_embeddings = embeddings  #: what the last call returned
        self.last_gender_prob = gender     #: P(gender_positive_class) per box of the last call; NaN for empty boxes
        #                                     (None for a model without a gender head)
        self.last_valid = valid            #: False where a box had no pixel inside the frame
        self.last_attributes = attributes  #: (N, A) P(attribute) per box; NaN rows for empty boxes; None: no head

    def get_features(self, boxes: np.ndarray, image: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit embeddings of `boxes` (N x 4 xyxy frame pixels) cut from `image` (uint8 BGR)."""
        frame = _check_image(image)
        xyxy = _check_boxes(boxes)
        pixels = pixel_boxes(xyxy, frame.shape[:2])
        valid = (pixels[:, 2] > pixels[:, 0]) & (pixels[:, 3] > pixels[:, 1])
        if self.empty == "error" and not valid.all():
            i = int(np.flatnonzero(~valid)[0])
            raise InvalidInputError(
                f"box #{i} {xyxy[i].tolist()} has no pixel inside the {frame.shape[1]}x{frame.shape[0]} frame; drop "
                f"it before tracking, or use AppearanceModel(..., empty='black') to give it a defined row.")
        n = len(xyxy)
        embeddings = np.empty((n, self.dim), np.float32)
        gender = np.full(n, np.nan, np.float32) if self.has_gender else None
        attributes = self._empty_attributes(n)
        rows = np.flatnonzero(valid)
        if rows.size:
            out = self.runtime.infer([frame[y0:y1, x0:x1] for x0, y0, x1, y1 in pixels[rows]])
            embeddings[rows] = out.embeddings
            if gender is not None:
                gender[rows] = out.gender_prob
            if attributes is not None:
                attributes[rows] = out.attributes
        if rows.size < n:
            embeddings[~valid] = self.black_row()
        self.calls += 1
        self._last_image = frame
        self._set_last(xyxy.copy(), pixels, embeddings, gender, valid, attributes)
        return embeddings

    def features_of(self, boxes: np.ndarray, image: np.ndarray) -> tuple:
        """(embeddings, gender_prob) of `boxes` in `image`: the last call's rows when it was for these boxes and this
        frame (a tracker's own call during `update`), else a new `get_features` call. gender_prob is None for a
        model without a gender head."""
        xyxy = _check_boxes(boxes)
        last = self._last_image
        same_frame = last is not None and (last is image or (isinstance(image, np.ndarray) and
                                                             last.shape == image.shape and np.array_equal(last, image)))
        # boxmot hands the boxes over as float32: compare at that precision.
        if not (same_frame and xyxy.shape == self.last_boxes.shape and
                np.array_equal(xyxy.astype(np.float32), self.last_boxes.astype(np.float32))):
            self.get_features(xyxy, image)
        gender = None if self.last_gender_prob is None else self.last_gender_prob.copy()
        return self.last_embeddings.copy(), gender

    def black_row(self) -> np.ndarray:
        """The embedding an empty box gets: that of an all-black crop of the model's input size (computed once)."""
        if self._black_row is None:
            meta = self.runtime.metadata
            black = np.zeros((int(meta.height), int(meta.width), 3), np.uint8)
            self._black_row = self.runtime.infer([black]).embeddings[0].copy()
        return self._black_row

    def close(self) -> None:
        """Close the Runtime if this object opened it (a shared Runtime stays open)."""
        if self._owns_runtime:
            self.runtime.close()

    def __enter__(self) -> "AppearanceModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AppearanceModel({self.runtime!r}, dim={self.dim}, empty={self.empty!r})"


def _version(text: str) -> tuple:
    parts = []
    for piece in str(text).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def make_tracker(name: str, appearance: Any, **options) -> Any:
    """A boxmot tracker (botsort, strongsort, deepocsort, boosttrack, hybridsort, occluboost) whose ReID features
    come from `appearance.get_features`; `options` go to the tracker's constructor."""
    boxmot = require("boxmot", "boxmot's trackers")
    if _version(getattr(boxmot, "__version__", "0")) < MIN_BOXMOT:
        raise MissingDependencyError(
            f"boxmot {boxmot.__version__} builds its own ReID model; edgereid needs boxmot >= "
            f"{'.'.join(map(str, MIN_BOXMOT))}, whose trackers take one as reid_model=: pip install -U "
            f'"edgereid[boxmot]" (CPU-only machines: see requirements/boxmot-cpu.txt)')
    key = name.lower().replace("-", "").replace("_", "")
    if key in MOTION_ONLY:
        raise InvalidInputError(f"boxmot's {name} tracks by motion only and never calls an appearance model; use one "
                                f"of {', '.join(TRACKERS)}.")
    if key not in TRACKERS:
        raise InvalidInputError(f"unknown tracker {name!r}; edgereid drives boxmot's {', '.join(TRACKERS)}.")
    if not callable(getattr(appearance, "get_features", None)):
        raise InvalidInputError(f"appearance must have get_features(boxes, image) (an AppearanceModel), got a "
                                f"{type(appearance).__name__}.")
    try:
        cls = getattr(boxmot, TRACKERS[key])
    except ImportError as exc:  # `import boxmot` is light; a tracker module imports scipy, lap, rich, torch
        raise MissingDependencyError(
            f"boxmot's {TRACKERS[key]} needs {exc.name}, which is not installed: pip install -r "
            f"requirements/boxmot-cpu.txt (the packages boxmot's trackers import, without torchvision)") from exc
    params = inspect.signature(cls).parameters
    # BoostTrack defaults to motion only; the flag is use_embeddings in boxmot 25, with_reid in 20-23.
    for flag in ("use_embeddings", "with_reid"):
        if flag in params:
            options.setdefault(flag, True)
    # `reid_model=` is boxmot's documented hook for a pre-built model: the tracker then calls only its
    # get_features(boxes, image) and builds no backend of its own (no weights download, no torchvision). Setting the
    # tracker's model attribute after construction would work too, but that attribute is renamed between releases.
    tracker = cls(reid_model=appearance, **options)
    if getattr(tracker, "generates_embeddings", True) is False:
        raise InvalidInputError(f"{name} was configured without appearance ({options}); it would never call the "
                                f"appearance model. Leave use_embeddings at True.")
    return tracker


def track_ids_of_detections(tracks: np.ndarray, num_detections: int) -> np.ndarray:
    """(num_detections,) int64: the track id each detection row was given by `tracker.update`, -1 where none.

    boxmot's rows are x1, y1, x2, y2, track id, conf, class, detection index; tracks that were only predicted this
    frame carry no detection index and are skipped.
    """
    ids = np.full(int(num_detections), -1, np.int64)
    rows = np.asarray(tracks)
    if rows.size == 0:
        return ids
    if rows.ndim != 2 or rows.shape[1] < 8:
        raise InvalidInputError(f"tracker output has shape {rows.shape}; expected boxmot's N x 8 rows (x1, y1, x2, "
                                f"y2, id, conf, class, detection index).")
    det = rows[:, 7].astype(np.int64)
    keep = (det >= 0) & (det < num_detections)
    ids[det[keep]] = rows[keep, 4].astype(np.int64)
    return ids
