"""Synthetic pedestrians written to disk as a Market-1501-layout re-ID set and a gender set (numpy + OpenCV).

Identity is carried by clothing colours/pattern, body shape and accessories; cameras change lighting,
colour cast, blur, scale and background; gender is cued by hair length, skirts and shoulder width, each
only probabilistically. The gender CSVs carry each person's visible attributes as columns (backpack, hat,
red / blue top, long hair, short sleeves, shorts; `synthetic_draw.ATTRIBUTES`). Everything is deterministic
from the seed: every image draws from its own random stream keyed by (seed, purpose, index), so the same
arguments give the same bytes.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from edgereid.atomic import publish_dir_durably, temp_dir_beside
from edgereid.errors import DatasetError, InvalidInputError

MAX_CAMERAS = 6  # Market-1501 names carry cameras c1..c6
_CAM, _ID, _COMBO, _REID, _GENDER, _DISTRACT, _SPLIT = range(7)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _write_jpeg(path: Path, img: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise DatasetError(f"could not encode synthetic image {path}")
    path.write_bytes(buf.tobytes())


def _write_csv(path: Path, rows: list) -> None:
    """`path,label,<attribute>...` rows; the attribute columns are `synthetic_draw.ATTRIBUTES` (1 / 0)."""
    from edgereid.training.synthetic_draw import ATTRIBUTES

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", *ATTRIBUTES])
        writer.writerows((rel, label, *(v for _, v in person.attributes())) for rel, label, person in rows)


def _identities(num_ids: int, seed: int) -> list:
    """num_ids people, half of them female, with distinct (top, bottom, pattern) palette combinations."""
    from edgereid.training.synthetic_draw import BOTTOM_COLOURS, PATTERNS, TOP_COLOURS, random_person

    rng = _rng(seed, _COMBO)
    n_combo = len(TOP_COLOURS) * len(BOTTOM_COLOURS) * len(PATTERNS)
    combos = rng.choice(n_combo, size=num_ids, replace=num_ids > n_combo)
    females = rng.permutation(np.arange(num_ids) < num_ids // 2 + num_ids % 2 * int(rng.integers(2)))
    people = []
    for i, c in enumerate(combos.tolist()):
        top, rest = divmod(c, len(BOTTOM_COLOURS) * len(PATTERNS))
        bottom, pattern = divmod(rest, len(PATTERNS))
        people.append(random_person(_rng(seed, _ID, i), int(females[i]), top, bottom, pattern))
    return people


def _params(**kw) -> dict:
    kw["image_size"] = list(kw["image_size"])
    return kw


def generate_synthetic(out_dir, num_ids: int = 150, images_per_id_per_cam: int = 3, num_cameras: int = 4,
                       gender_images: int = 2000, seed: int = 0, image_size: tuple = (128, 64),
                       test_id_fraction: float = 0.5, gender_test_fraction: float = 0.25,
                       num_distractors: int = 20, num_junk: int = 10, overwrite: bool = False,
                       progress: bool = True) -> dict:
    """Write the synthetic re-ID set (Market-1501 layout) and gender set under `out_dir`; return a summary.

    Re-running with identical arguments reuses an existing set; different arguments need `overwrite`.
    """
    from edgereid.progress import progress as progress_bar
    from edgereid.training.synthetic_draw import random_camera, random_person, render

    params = _params(num_ids=num_ids, images_per_id_per_cam=images_per_id_per_cam, num_cameras=num_cameras,
                     gender_images=gender_images, seed=seed, image_size=tuple(image_size),
                     test_id_fraction=test_id_fraction, gender_test_fraction=gender_test_fraction,
                     num_distractors=num_distractors, num_junk=num_junk)
    if not 2 <= num_cameras <= MAX_CAMERAS:
        raise InvalidInputError(f"num_cameras must be 2..{MAX_CAMERAS} (Market-1501 names cameras c1..c6)")
    if num_ids < 4 or images_per_id_per_cam < 1 or not 0 < test_id_fraction < 1:
        raise InvalidInputError("need num_ids >= 4, images_per_id_per_cam >= 1 and 0 < test_id_fraction < 1")
    out_dir = Path(out_dir).expanduser().resolve()
    summary_path = out_dir / "summary.json"
    if out_dir.exists():
        if summary_path.is_file() and not overwrite:
            old = json.loads(summary_path.read_text())
            if old.get("params") == params:
                return {**old, "reused": True}
        if not overwrite:
            raise DatasetError(f"{out_dir} already exists and was not written by generate_synthetic with these "
                               f"arguments; choose another folder or pass overwrite=True.")
    start = time.perf_counter()
    h, w = int(image_size[0]), int(image_size[1])
    cameras = [random_camera(_rng(seed, _CAM, c), h, w) for c in range(num_cameras)]
    people = _identities(num_ids, seed)
    split_rng = _rng(seed, _SPLIT, 0)
    n_test = max(2, min(num_ids - 2, int(round(num_ids * test_id_fraction))))
    test_ids = set(split_rng.choice(num_ids, size=n_test, replace=False).tolist())
    n_reid = num_ids * num_cameras * images_per_id_per_cam + num_distractors + num_junk
    tmp = temp_dir_beside(out_dir)
    try:
        reid, gender = tmp / "market1501", tmp / "gender"
        for sub in ("bounding_box_train", "query", "bounding_box_test"):
            (reid / sub).mkdir(parents=True)
        (gender / "images").mkdir(parents=True)
        bar = progress_bar(total=n_reid + gender_images, desc="synthetic images", unit="img", enabled=progress)
        reid_rows, reid_test_rows, counts = [], [], {"train": 0, "query": 0, "gallery": 0}
        frame = 0
        for i, person in enumerate(people):
            pid, is_test = i + 1, i in test_ids
            for c in range(num_cameras):
                for k in range(images_per_id_per_cam):
                    frame += 1
                    img = render(person, cameras[c], _rng(seed, _REID, i, c, k), (h, w))
                    split = ("query" if k == 0 else "gallery") if is_test else "train"
                    sub = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}[split]
                    rel = f"{sub}/{pid:04d}_c{c + 1}s1_{frame:06d}_00.jpg"
                    _write_jpeg(reid / rel, img)
                    counts[split] += 1
                    reid_rows.append((rel, person.female, person))
                    if is_test:
                        reid_test_rows.append((rel, person.female, person))
                    bar.update()
        # Distractors (id 0: people who are nobody's match) and junk (id -1: background-only boxes).
        for j in range(num_distractors + num_junk):
            rng = _rng(seed, _DISTRACT, j)
            c = int(rng.integers(num_cameras))
            frame += 1
            if j < num_distractors:
                person = random_person(rng, int(rng.integers(2)))
                img, name = render(person, cameras[c], rng, (h, w)), f"0000_c{c + 1}s1_{frame:06d}_00.jpg"
                reid_rows.append((f"bounding_box_test/{name}", person.female, person))
                counts["gallery"] += 1
            else:
                bg = cameras[c].background
                y0, x0 = int(rng.integers(bg.shape[0] - h + 1)), int(rng.integers(bg.shape[1] - w + 1))
                img, name = bg[y0:y0 + h, x0:x0 + w], f"-1_c{c + 1}s1_{frame:06d}_00.jpg"
            _write_jpeg(reid / "bounding_box_test" / name, img)
            bar.update()
        _write_csv(reid / "gender.csv", reid_rows)
        _write_csv(reid / "gender_test.csv", reid_test_rows)
        # Gender set: a fresh person per image, exactly balanced, random camera.
        g_rng = _rng(seed, _SPLIT, 1)
        labels = g_rng.permutation(np.arange(gender_images) < gender_images // 2)
        rows = []
        for j in range(gender_images):
            rng = _rng(seed, _GENDER, j)
            person = random_person(rng, int(labels[j]))
            img = render(person, cameras[int(rng.integers(num_cameras))], rng, (h, w))
            rel = f"images/{j:06d}.jpg"
            _write_jpeg(gender / rel, img)
            rows.append((rel, person.female, person))
            bar.update()
        bar.close()
        n_gtest = int(round(gender_images * gender_test_fraction))
        _write_csv(gender / "gender.csv", rows)
        _write_csv(gender / "gender_train.csv", rows[:gender_images - n_gtest])
        _write_csv(gender / "gender_test.csv", rows[gender_images - n_gtest:])
        summary = {
            "reid_root": str(out_dir / "market1501"),
            "reid_gender_csv": str(out_dir / "market1501" / "gender.csv"),
            "reid_test_gender_csv": str(out_dir / "market1501" / "gender_test.csv"),
            "gender_root": str(out_dir / "gender"),
            "gender_csv": str(out_dir / "gender" / "gender.csv"),
            "gender_train_csv": str(out_dir / "gender" / "gender_train.csv"),
            "gender_test_csv": str(out_dir / "gender" / "gender_test.csv"),
            "num_train_ids": num_ids - n_test, "num_test_ids": n_test,
            "num_train_images": counts["train"], "num_query": counts["query"], "num_gallery": counts["gallery"],
            "num_distractors": num_distractors, "num_junk": num_junk,
            "num_gender_train": gender_images - n_gtest, "num_gender_test": n_gtest,
            "seed": seed, "image_size": [h, w], "params": params,
            "seconds": round(time.perf_counter() - start, 2),
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        _move_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {**summary, "reused": False}


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temp folder in; an old set (overwrite) is removed only after the swap."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    publish_dir_durably(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
