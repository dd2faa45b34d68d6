"""Generated camera sequences with known identities: synthetic pedestrians walking across a camera's view, two or
three crossing each other, the same people seen again by a second camera. numpy + OpenCV only.

The people and cameras come from the training generator's drawing code (`edgereid.training.synthetic_draw`), so a
model trained on `edgereid quickstart`'s synthetic set sees the same kind of person, but never these identities.
Ground truth is exact: each person is drawn on its own canvas, and its box is where its pixels are.

Tests import this as `benchmarks.synthetic_scenes`, benchmark scripts as `synthetic_scenes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgereid.training.synthetic_draw import draw_person, random_camera, random_person

FRAME_HW = (192, 320)
_PERSON, _CAMERA, _PATH, _NOISE = range(4)


@dataclass(frozen=True)
class Walk:
    """One person crossing one camera's view: from (x0, feet0) at frame t0 to (x1, feet1) at frame t1."""

    pid: int
    t0: int
    t1: int
    x0: float
    x1: float
    feet0: float
    feet1: float
    height: float  # pixels


@dataclass
class Sequence:
    """One camera's frames (uint8 BGR) and ground truth: frame number -> [(pid, x1, y1, x2, y2)] (1-based frames)."""

    frames: dict
    boxes: dict
    camera: int


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _draw_on_canvas(person, ph: float, t: int, rng_phase: float) -> tuple:
    """The person drawn on its own canvas: (pixels, mask, head top offset, centre offset); walking pose at `t`."""
    h, w = int(np.ceil(1.2 * ph)), int(np.ceil(0.9 * ph))
    top, cx = 0.1 * ph, w / 2
    swing = 0.05 * ph * np.sin(0.5 * t + rng_phase)
    spread = 0.03 * ph * (1 + np.sin(0.5 * t + rng_phase))
    # Drawn twice, on black and on white: a pixel is the person's where either drawing changed it.
    dark, light = np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 255, np.uint8)
    draw_person(dark, person, ph, top, cx, swing, spread)
    draw_person(light, person, ph, top, cx, swing, spread)
    mask = (dark != 0).any(axis=2) | (light != 255).any(axis=2)
    return dark, mask, top, cx


def render_sequence(people: list, walks: list, num_frames: int, seed: int, camera: int = 0,
                    size: tuple = FRAME_HW, min_visible: float = 0.5) -> Sequence:
    """Frames 1..num_frames of `walks` seen by camera `camera` (its own background, light, blur and noise).

    People nearer the camera (feet lower in the frame) are drawn over the others. A box is recorded while at least
    `min_visible` of the person's width is inside the frame; it is clipped to the frame. Occluded people keep their
    full box, as a ground-truth annotation does.
    """
    import cv2

    H, W = size
    cam = random_camera(_rng(seed, _CAMERA, camera), H // 2, W // 2)
    background = cv2.resize(cam.background, (W, H), interpolation=cv2.INTER_LINEAR)
    phases = {w.pid: float(_rng(seed, _PATH, camera, w.pid).uniform(0, 6.3)) for w in walks}
    frames, boxes = {}, {}
    for t in range(1, num_frames + 1):
        img = background.copy()
        here = []
        for walk in walks:
            if not walk.t0 <= t <= walk.t1:
                continue
            a = (t - walk.t0) / max(1, walk.t1 - walk.t0)
            here.append((walk.feet0 + a * (walk.feet1 - walk.feet0), walk.x0 + a * (walk.x1 - walk.x0), walk))
        found = []
        for feet, x, walk in sorted(here, key=lambda item: item[0]):
            pixels, mask, top, cx = _draw_on_canvas(people[walk.pid], walk.height, t, phases[walk.pid])
            ys, xs = np.nonzero(mask)
            oy, ox = int(round(feet - walk.height - top)), int(round(x - cx))
            box = (ox + xs.min(), oy + ys.min(), ox + xs.max() + 1, oy + ys.max() + 1)
            # paste the canvas where it overlaps the frame
            y0, x0, y1, x1 = max(0, oy), max(0, ox), min(H, oy + mask.shape[0]), min(W, ox + mask.shape[1])
            if y1 > y0 and x1 > x0:
                sub = mask[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                img[y0:y1, x0:x1][sub] = pixels[y0 - oy:y1 - oy, x0 - ox:x1 - ox][sub]
            cx0, cy0, cx1, cy1 = max(0, box[0]), max(0, box[1]), min(W, box[2]), min(H, box[3])
            if cx1 > cx0 and cy1 > cy0 and (cx1 - cx0) >= min_visible * (box[2] - box[0]):
                found.append((walk.pid, float(cx0), float(cy0), float(cx1), float(cy1)))
        frames[t] = _camera_effects(img, cam, _rng(seed, _NOISE, camera, t))
        if found:
            boxes[t] = sorted(found)
    return Sequence(frames, boxes, camera)


def _camera_effects(img: np.ndarray, cam, rng: np.random.Generator) -> np.ndarray:
    import cv2

    if cam.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), cam.blur)
    gain = cam.gain * np.array(cam.cast, np.float32)
    out = img.astype(np.float32) * gain + rng.standard_normal(img.shape, dtype=np.float32) * cam.noise
    return np.clip(out, 0, 255).astype(np.uint8)


def crossing_scene(seed: int, num_frames: int = 90, size: tuple = FRAME_HW) -> tuple:
    """Two cameras and four people: camera 0 sees people 0, 1, 2 and camera 1 (later) sees 0, 1, 3.

    In each camera two people walk towards each other at nearly the same depth and cross mid-way (one hides the
    other for a few frames); the third walks the same way as one of them, further back. Returns (people, [two
    Sequences]); people[pid].female is the gender truth.
    """
    H, W = size
    people = [random_person(_rng(seed, _PERSON, i), int(i % 2)) for i in range(4)]
    rng = _rng(seed, _PATH, 99)
    walks = {0: [], 1: []}
    for camera, (a, b, c) in enumerate([(0, 1, 2), (0, 1, 3)]):
        start = 1 if camera == 0 else num_frames // 3  # people reach camera 1 after they have left camera 0
        span = num_frames - num_frames // 3 - 2
        ph = H * rng.uniform(0.5, 0.6)
        feet = H * rng.uniform(0.8, 0.9)
        margin = 0.35 * ph
        walks[camera] += [
            Walk(a, start, start + span, -margin, W + margin, feet, feet + rng.uniform(-4, 4), ph),
            Walk(b, start, start + span, W + margin, -margin, feet + 3, feet + rng.uniform(-4, 4), ph * 0.97),
            Walk(c, start + 5, start + span, -margin, W * 0.8, feet - 0.22 * H, feet - 0.2 * H, ph * 0.8),
        ]
    return people, [render_sequence(people, walks[c], num_frames, seed, camera=c, size=size) for c in (0, 1)]


def write_mot(sequence: Sequence, folder: str | Path, conf: float = 0.9) -> Path:
    """A MOT-challenge folder: img1/000001.png..., det/det.txt (the true boxes at `conf`), gt/gt.txt (with ids)."""
    import cv2

    folder = Path(folder)
    for sub in ("img1", "det", "gt"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for t, frame in sequence.frames.items():
        cv2.imwrite(str(folder / "img1" / f"{t:06d}.png"), frame)  # PNG: readers see exactly these pixels
    det, gt = [], []
    for t, rows in sorted(sequence.boxes.items()):
        for pid, x1, y1, x2, y2 in rows:
            det.append(f"{t},-1,{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},{conf},-1,-1,-1\n")
            gt.append(f"{t},{pid},{x1:.1f},{y1:.1f},{x2 - x1:.1f},{y2 - y1:.1f},1,1,1\n")
    (folder / "det" / "det.txt").write_text("".join(det))
    (folder / "gt" / "gt.txt").write_text("".join(gt))
    return folder


def detections(sequence: Sequence, t: int, conf: float = 0.9) -> tuple:
    """(dets N x 6 float32 x1,y1,x2,y2,conf,class 0 as boxmot takes them, pids (N,)) at frame t."""
    rows = sequence.boxes.get(t, [])
    dets = np.array([[x1, y1, x2, y2, conf, 0] for _, x1, y1, x2, y2 in rows], np.float32).reshape(-1, 6)
    return dets, np.array([pid for pid, *_ in rows], np.int64)
