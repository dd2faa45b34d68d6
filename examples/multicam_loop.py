"""Several cameras -> detector boxes -> crops -> one DynamicBatcher -> a cross-camera gallery with gender.

    python examples/multicam_loop.py model.onnx cam0/ cam1/ ... -o site.gallery [--min-conf 0.3] [--match 0.6]

Each camera folder is laid out like a MOT-challenge sequence: frames in img1/000001.jpg (or .png), ...
and detector boxes in det/det.txt, one line per box: frame,id,left,top,width,height,confidence,x,y,z (1-based frames).
One thread per camera submits its crops to the shared batcher, which runs them in batches; each crop joins
the gallery under the person id of its nearest earlier crop (any camera) when closer than --match, else
under a new id. The gallery (embedding, id, camera, frame, gender probability, box) is saved for
examples/forensic_search.py.
"""
from __future__ import annotations

import argparse
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgereid import DynamicBatcher, Runtime, read_image
from edgereid.imageio import list_images
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.gallery_paths import save_gallery



def read_detections(path: Path, min_conf: float) -> dict:
    """frame number -> list of (left, top, width, height) boxes with confidence >= min_conf."""
    boxes: dict = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        f = [float(v) for v in line.split(",")[:7]]
        if f[6] >= min_conf:
            boxes.setdefault(int(f[0]), []).append(tuple(f[2:6]))
    return boxes


def crop(frame: np.ndarray, box: tuple) -> np.ndarray | None:
    """The box's pixels, clipped to the frame (detectors return boxes partly outside); None if nothing is left."""
    left, top, width, height = box
    x0, y0 = max(0, int(round(left))), max(0, int(round(top)))
    x1, y1 = min(frame.shape[1], int(round(left + width))), min(frame.shape[0], int(round(top + height)))
    return frame[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else None


class CrossCameraGallery:
    """A Gallery plus id assignment; one lock so that concurrent cameras never both create the same person."""

    def __init__(self, dim: int, match_distance: float) -> None:
        self.gallery = Gallery(dim=dim)
        self.match_distance = match_distance
        self.next_id = 0
        self.lock = threading.Lock()

    def add(self, embedding: np.ndarray, gender_prob: float, camera: int, frame: int, box: tuple) -> int:
        with self.lock:
            hits = self.gallery.search(embedding, k=1) if len(self.gallery) else []
            if hits and hits[0].distance <= self.match_distance:
                pid = hits[0].id
            else:
                pid, self.next_id = self.next_id, self.next_id + 1
            self.gallery.add(embedding[None], ids=[pid], cameras=[camera], gender_prob=[gender_prob],
                             times=[frame], meta=[{"box": [round(v, 1) for v in box]}])
            return pid


def run_camera(camera: int, folder: Path, batcher: DynamicBatcher, people: CrossCameraGallery,
               min_conf: float) -> int:
    """Feed one camera's frames through the batcher; returns how many crops it added."""
    detections = read_detections(folder / "det" / "det.txt", min_conf)
    added = 0
    for frame_path in list_images(folder / "img1"):
        number = int(frame_path.stem)
        frame = read_image(frame_path)
        crops = [(box, crop(frame, box)) for box in detections.get(number, [])]
        # Submit the whole frame first, then wait: the batcher groups this frame with other cameras' crops.
        futures = [(box, batcher.submit(pixels)) for box, pixels in crops if pixels is not None]
        for box, future in futures:
            result = future.result()
            people.add(result.embedding, result.gender_prob, camera, number, box)
            added += 1
    return added


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Multi-camera crops -> dynamic batcher -> cross-camera gallery.")
    parser.add_argument("model", type=Path)
    parser.add_argument("cameras", type=Path, nargs="+", help="MOT-style folders (img1/, det/det.txt)")
    parser.add_argument("-o", "--output", default="site.gallery",
                        help="a .gallery file, a GalleryStore (.sqlite/.db), NAME.milvus.db or a Milvus server URI")
    parser.add_argument("--collection", default="edgereid", help="the Milvus collection, when -o is Milvus")
    parser.add_argument("--min-conf", type=float, default=0.0, help="drop detections below this confidence")
    parser.add_argument("--match", type=float, default=0.6, help="max L2 distance to reuse a person id")
    parser.add_argument("--max-latency-ms", type=float, default=5.0)
    args = parser.parse_args(argv)

    with Runtime(args.model) as rt, DynamicBatcher(rt, max_latency_ms=args.max_latency_ms) as batcher:
        people = CrossCameraGallery(rt.metadata.embedding_dim, args.match)
        with ThreadPoolExecutor(len(args.cameras)) as pool:
            counts = list(pool.map(lambda c: run_camera(c, args.cameras[c], batcher, people, args.min_conf),
                                   range(len(args.cameras))))
    g = people.gallery
    save_gallery(g, args.output, collection=args.collection)  # Milvus, GalleryStore or .gallery: by name
    female = int(np.sum(g.gender_prob >= 0.5))
    print(f"{sum(counts)} crops from {len(counts)} cameras ({counts}) -> {people.next_id} people, "
          f"{female} crops female; mean batch {batcher.mean_batch_size:.1f}; saved {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
