"""Drawing synthetic pedestrians and camera effects with OpenCV (used by `edgereid.training.synthetic`)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# BGR palettes; identities draw distinct (top, bottom, pattern) combinations from these.
TOP_COLOURS = [(40, 40, 200), (40, 160, 40), (190, 80, 30), (30, 200, 230), (235, 235, 235), (30, 30, 30),
               (130, 130, 130), (20, 120, 240), (150, 40, 130), (200, 200, 40), (40, 70, 120), (170, 120, 240),
               (100, 30, 20), (60, 140, 120)]
BOTTOM_COLOURS = [(25, 25, 25), (90, 40, 20), (150, 90, 50), (120, 120, 120), (150, 190, 210),
                  (40, 60, 100), (90, 140, 160), (225, 225, 225), (40, 40, 170), (50, 110, 50)]
PATTERNS = ("solid", "hstripes", "vstripes", "checks")
RED, BLUE = 0, 2  # TOP_COLOURS entries whose hue is plainly red / blue (BGR)
# What a generated person shows and the gender CSVs carry as columns, in PETA's words.
ATTRIBUTES = ("carryingBackpack", "accessoryHat", "upperBodyRed", "upperBodyBlue", "hairLong",
              "upperBodyShortSleeve", "lowerBodyShorts")
SKIN = [(170, 200, 240), (120, 160, 210), (80, 110, 160), (50, 75, 115)]
HAIR = [(20, 20, 20), (30, 50, 80), (50, 90, 150), (130, 160, 200), (100, 100, 100)]


@dataclass(frozen=True)
class Person:
    """Everything that stays fixed for one identity: colours, clothes, body shape, accessories, gender."""

    female: int
    skin: tuple
    hair: tuple
    long_hair: bool
    top: tuple
    top2: tuple
    pattern: str
    long_sleeves: bool
    bottom: tuple
    bottom_kind: str  # "trousers" | "shorts" | "skirt"
    shoes: tuple
    height: float     # fraction of the camera's nominal person height
    shoulders: float  # shoulder half-width factor (wider on average for men, overlapping ranges)
    hips: float
    leg: float        # leg length as a fraction of body height
    bag: str          # "" | "backpack" | "handbag"
    bag_colour: tuple
    bag_side: int
    hat: tuple        # () = no hat
    top_index: int = -1  # the TOP_COLOURS entry of `top` (before jitter); names the colour attribute

    def attributes(self) -> tuple:
        """(name, 1 | 0) of the visible attributes, named by PETA's vocabulary (`ATTRIBUTES`)."""
        values = (self.bag == "backpack", bool(self.hat), self.top_index == RED, self.top_index == BLUE,
                  self.long_hair, not self.long_sleeves, self.bottom_kind == "shorts")
        return tuple((name, int(v)) for name, v in zip(ATTRIBUTES, values))


@dataclass(frozen=True)
class Camera:
    """Per-camera appearance: lighting gain, colour cast, blur, noise, person scale and background."""

    gain: float
    cast: tuple
    blur: float
    noise: float
    scale: float
    background: np.ndarray  # BGR, larger than a crop; each image takes a random window


def _jitter(rng: np.random.Generator, colour, amount: int = 18) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def random_person(rng: np.random.Generator, female: int, top: int = -1, bottom: int = -1,
                  pattern: int = -1) -> Person:
    """A person with the given gender; palette indices of -1 are drawn at random."""
    top = int(rng.integers(len(TOP_COLOURS))) if top < 0 else top
    bottom = int(rng.integers(len(BOTTOM_COLOURS))) if bottom < 0 else bottom
    pattern = int(rng.integers(len(PATTERNS))) if pattern < 0 else pattern
    top2 = TOP_COLOURS[(top + int(rng.integers(3, len(TOP_COLOURS) - 3))) % len(TOP_COLOURS)]
    # Gender cues are probabilistic so that no single one decides: hair length, skirt, shoulder width.
    long_hair = bool(rng.random() < (0.85 if female else 0.1))
    skirt_p = 0.5 if female else 0.03
    u = rng.random()
    kind = "skirt" if u < skirt_p else ("shorts" if u < skirt_p + 0.15 else "trousers")
    bag_u = rng.random()
    return Person(
        female=int(female), skin=_jitter(rng, SKIN[int(rng.integers(len(SKIN)))], 10),
        hair=_jitter(rng, HAIR[int(rng.integers(len(HAIR)))], 10), long_hair=long_hair,
        top=_jitter(rng, TOP_COLOURS[top]), top2=_jitter(rng, top2), pattern=PATTERNS[pattern],
        long_sleeves=bool(rng.random() < 0.6), bottom=_jitter(rng, BOTTOM_COLOURS[bottom]), bottom_kind=kind,
        shoes=_jitter(rng, (20, 20, 20) if rng.random() < 0.5 else (220, 220, 220), 30),
        height=float(rng.uniform(0.86, 1.0)),
        shoulders=float(rng.normal(0.84 if female else 1.02, 0.06)), hips=float(rng.normal(1.0, 0.06)),
        leg=float(rng.uniform(0.44, 0.52)),
        bag="" if bag_u < 0.5 else ("backpack" if bag_u < 0.75 else "handbag"),
        bag_colour=_jitter(rng, TOP_COLOURS[int(rng.integers(len(TOP_COLOURS)))], 25),
        bag_side=int(rng.choice([-1, 1])),
        hat=_jitter(rng, TOP_COLOURS[int(rng.integers(len(TOP_COLOURS)))]) if rng.random() < 0.2 else (),
        top_index=top,
    )


def make_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background twice the crop size: smooth noise, brick lines or a street with objects."""
    H, W = 2 * h, 2 * w
    base = rng.uniform(60, 200, 3).astype(np.float32)
    # Mostly brightness variation with a little colour, like real walls and pavements.
    blobs = rng.normal(0, 35, (6, 4, 1)) + rng.normal(0, 12, (6, 4, 3))
    low = cv2.resize(blobs.astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    bg = base + low
    kind = int(rng.integers(3))
    if kind == 1:  # bricks / tiles
        step = max(4, h // int(rng.integers(8, 16)))
        bg[::step] *= 0.6
        for r in range(0, H, step):
            off = (r // step % 2) * step
            bg[r:r + step, off::2 * step] *= 0.75
    elif kind == 2:  # street: darker ground plane and a few parked objects
        bg[int(H * rng.uniform(0.5, 0.7)):] *= 0.6
        for _ in range(int(rng.integers(3, 7))):
            x, y = int(rng.integers(W)), int(rng.integers(H))
            cv2.rectangle(bg, (x, y), (x + int(rng.integers(5, w // 2)), y + int(rng.integers(5, h // 3))),
                          tuple(float(v) for v in rng.uniform(30, 230, 3)), -1)
    bg += rng.normal(0, 6, bg.shape).astype(np.float32)
    return np.clip(bg, 0, 255).astype(np.uint8)


def random_camera(rng: np.random.Generator, h: int, w: int) -> Camera:
    """A camera with its own lighting, colour cast, blur, noise, distance and background."""
    return Camera(gain=float(rng.uniform(0.7, 1.25)), cast=tuple(float(c) for c in 1 + rng.uniform(-0.12, 0.12, 3)),
                  blur=float(rng.uniform(0.0, 1.0)), noise=float(rng.uniform(2, 7)),
                  scale=float(rng.uniform(0.8, 0.94)), background=make_background(rng, h, w))


def _pt(x: float, y: float) -> tuple:
    return int(round(x)), int(round(y))


def _pattern_layer(p: Person, shape: tuple, top: float, period: float) -> np.ndarray:
    """The torso texture over the whole canvas (masked by the torso polygon afterwards)."""
    h, w = shape
    if p.pattern == "solid":
        return np.broadcast_to(np.array(p.top, np.uint8), (h, w, 3))
    yy = ((np.arange(h) - top) // max(1.0, period / 2)).astype(np.int64)[:, None] % 2
    xx = (np.arange(w) // max(1.0, period / 2)).astype(np.int64)[None, :] % 2
    mask = {"hstripes": np.broadcast_to(yy, (h, w)), "vstripes": np.broadcast_to(xx, (h, w)),
            "checks": yy ^ xx}[p.pattern].astype(bool)
    return np.where(mask[..., None], np.array(p.top2, np.uint8), np.array(p.top, np.uint8))


def draw_person(img: np.ndarray, p: Person, ph: float, top: float, cx: float, swing: float, spread: float) -> None:
    """Draw `p` in place: `ph` pixels tall, head at `top`, centred on `cx`, arms/legs posed."""
    h, w = img.shape[:2]
    lw = max(1, int(round(0.085 * ph)))
    r = 0.065 * ph
    y_sh = top + 0.17 * ph
    y_feet = top + ph
    y_hip = y_feet - p.leg * ph
    sw, hw = 0.15 * ph * p.shoulders, 0.105 * ph * p.hips
    # Arms behind the torso: sleeves in the top colour, hands (and forearms with short sleeves) in skin.
    for side in (-1, 1):
        s, e = _pt(cx + side * sw * 0.9, y_sh + 0.02 * ph), _pt(cx + side * (sw + swing), y_hip + 0.03 * ph)
        mid = _pt((s[0] + e[0]) / 2, (s[1] + e[1]) / 2)
        cv2.line(img, s, e, p.top if p.long_sleeves else p.skin, max(1, lw * 2 // 3))
        cv2.line(img, s, mid, p.top, max(1, lw * 2 // 3))
        cv2.circle(img, e, max(1, lw // 3), p.skin, -1)
    # Legs and the waist band.
    for side in (-1, 1):
        hip, foot = _pt(cx + side * hw * 0.5, y_hip), _pt(cx + side * (hw * 0.5 + spread), y_feet - 0.02 * ph)
        knee = _pt((hip[0] + foot[0]) / 2, (hip[1] + foot[1]) / 2)
        cv2.line(img, hip, foot, p.bottom if p.bottom_kind == "trousers" else p.skin, lw)
        if p.bottom_kind == "shorts":
            cv2.line(img, hip, knee, p.bottom, lw + 1)
        cv2.ellipse(img, foot, (max(1, lw * 2 // 3), max(1, lw // 3)), 0, 0, 360, p.shoes, -1)
    waist = np.array([_pt(cx - hw, y_hip - 0.02 * ph), _pt(cx + hw, y_hip - 0.02 * ph),
                      _pt(cx + hw * 0.9, y_hip + 0.08 * ph), _pt(cx - hw * 0.9, y_hip + 0.08 * ph)], np.int32)
    cv2.fillConvexPoly(img, waist, p.bottom)
    if p.bottom_kind == "skirt":
        skirt = np.array([_pt(cx - hw, y_hip - 0.02 * ph), _pt(cx + hw, y_hip - 0.02 * ph),
                          _pt(cx + hw * 1.6, y_hip + 0.24 * ph), _pt(cx - hw * 1.6, y_hip + 0.24 * ph)], np.int32)
        cv2.fillConvexPoly(img, skirt, p.bottom)
    # Torso with its pattern.
    torso = np.array([_pt(cx - sw, y_sh), _pt(cx + sw, y_sh), _pt(cx + hw, y_hip), _pt(cx - hw, y_hip)], np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(mask, torso, 1)
    sel = mask.astype(bool)
    img[sel] = _pattern_layer(p, (h, w), y_sh, 0.07 * ph)[sel]
    # Accessories over the torso.
    if p.bag == "backpack":
        for side in (-1, 1):
            cv2.line(img, _pt(cx + side * sw * 0.5, y_sh), _pt(cx + side * sw * 0.6, y_hip - 0.05 * ph),
                     p.bag_colour, max(1, lw // 3))
        x0 = cx + p.bag_side * sw * 0.7
        cv2.rectangle(img, _pt(x0 - 0.06 * ph, y_sh + 0.04 * ph), _pt(x0 + 0.06 * ph, y_hip - 0.04 * ph),
                      p.bag_colour, -1)
    elif p.bag == "handbag":
        cv2.line(img, _pt(cx - p.bag_side * sw * 0.7, y_sh), _pt(cx + p.bag_side * hw, y_hip), p.bag_colour,
                 max(1, lw // 4))
        x0 = cx + p.bag_side * (hw + 0.02 * ph)
        cv2.rectangle(img, _pt(x0 - 0.05 * ph, y_hip - 0.04 * ph), _pt(x0 + 0.05 * ph, y_hip + 0.06 * ph),
                      p.bag_colour, -1)
    # Head: long hair hangs behind the face down past the shoulders; short hair is a cap.
    hc = _pt(cx, top + r)
    if p.long_hair:
        cv2.rectangle(img, _pt(cx - 1.25 * r, top + r), _pt(cx + 1.25 * r, y_sh + 0.16 * ph), p.hair, -1)
    cv2.rectangle(img, _pt(cx - 0.3 * r, top + 1.6 * r), _pt(cx + 0.3 * r, y_sh), p.skin, -1)
    cv2.ellipse(img, hc, (max(1, int(0.85 * r)), max(1, int(r))), 0, 0, 360, p.skin, -1)
    cv2.ellipse(img, hc, (max(1, int(0.9 * r)), max(1, int(1.05 * r))), 0, 180, 360, p.hair, -1)
    if p.hat:
        cv2.rectangle(img, _pt(cx - 0.95 * r, top - 0.15 * r), _pt(cx + 0.95 * r, top + 0.5 * r), p.hat, -1)
        cv2.line(img, _pt(cx - 1.3 * r, top + 0.5 * r), _pt(cx + 1.3 * r, top + 0.5 * r), p.hat, max(1, lw // 4))


def render(p: Person, cam: Camera, rng: np.random.Generator, size: tuple, occlusion_p: float = 0.3) -> np.ndarray:
    """One uint8 BGR crop of `p` seen by `cam`: pose, position, occlusion, lighting, blur and noise vary."""
    h, w = size
    bh, bw = cam.background.shape[:2]
    y0, x0 = int(rng.integers(bh - h + 1)), int(rng.integers(bw - w + 1))
    img = cam.background[y0:y0 + h, x0:x0 + w].copy()
    ph = h * cam.scale * p.height * rng.uniform(0.95, 1.05)
    top = (h - ph) * rng.uniform(0.25, 0.75)
    cx = w / 2 + rng.uniform(-0.07, 0.07) * w
    draw_person(img, p, ph, top, cx, swing=rng.uniform(-0.03, 0.06) * ph, spread=rng.uniform(0.0, 0.06) * ph)
    if rng.random() < occlusion_p:  # another object in front: from the bottom or from one side
        colour = tuple(int(v) for v in rng.integers(20, 235, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (0, int(h * rng.uniform(0.7, 0.88))), (w, h), colour, -1)
        else:
            ow = int(w * rng.uniform(0.15, 0.35))
            xs = 0 if rng.random() < 0.5 else w - ow
            cv2.rectangle(img, (xs, int(h * rng.uniform(0.0, 0.5))), (xs + ow, h), colour, -1)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if cam.blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), cam.blur * h / 128)
    gain = cam.gain * rng.uniform(0.9, 1.1) * np.array(cam.cast, np.float32)
    out = img.astype(np.float32) * gain + rng.standard_normal(img.shape, dtype=np.float32) * cam.noise
    return np.clip(out, 0, 255).astype(np.uint8)
