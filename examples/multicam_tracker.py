"""Several cameras -> a boxmot tracker per camera, fed with edgereid features -> tracklets -> people across cameras.

    python examples/multicam_tracker.py model.onnx cam0/ cam1/ ... -o site.gallery [--tracker botsort]
        [--min-conf 0.3] [--match 1.0] [--gender-margin 0.25] [--max-gap 30]

Each camera folder is a MOT-challenge sequence, as for examples/multicam_loop.py: frames img1/000001.jpg (or
.png), ... and detector boxes det/det.txt (frame,id,left,top,width,height,confidence,...; 1-based frames).
Frames are taken in frame-number order across the cameras. Within a camera the tracker keeps identity (motion
plus edgereid's appearance features, one model pass per frame). A track unseen for --max-gap frames becomes a
tracklet (mean embedding, mean gender), which joins the nearest earlier person within --match whose gender does not
contradict it, or starts a new person (edgereid.integrations.tracklets). Unlike multicam_loop.py, one noisy crop
cannot move a person to another id: identity is decided per tracklet. The saved gallery holds every tracked crop
with its person id, camera, track id (per camera), frame, gender and box, for examples/forensic_search.py.
Needs boxmot (docs/trackers.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from edgereid import Runtime, read_image
from edgereid.imageio import list_images
from edgereid.integrations.boxmot import AppearanceModel, make_tracker, track_ids_of_detections
from edgereid.integrations.tracklets import IdentityMatcher, TrackletBuilder
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.gallery_paths import save_gallery


def read_detections(path: Path, min_conf: float) -> dict:
    """frame number -> N x 6 float32 detections (x1, y1, x2, y2, confidence, class 0) with confidence >= min_conf."""
    rows: dict = {}
    for line in path.read_text().splitlines():
        if line.strip():
            f = [float(v) for v in line.split(",")[:7]]
            if f[6] >= min_conf:
                rows.setdefault(int(f[0]), []).append([f[2], f[3], f[2] + f[4], f[3] + f[5], min(f[6], 1.0), 0])
    return {k: np.array(v, np.float32) for k, v in rows.items()}


class Camera:
    """One camera: its frames and detections, a tracker whose appearance model is edgereid, and its tracklets."""

    def __init__(self, index: int, folder: Path, runtime: Runtime, tracker: str, min_conf: float,
                 max_gap: int, tracker_options: dict | None = None) -> None:
        self.index = index
        self.frames = {int(p.stem): p for p in list_images(folder / "img1")}
        self.detections = read_detections(folder / "det" / "det.txt", min_conf)
        self.appearance = AppearanceModel(runtime)  # one Runtime shared by every camera
        self.tracker = make_tracker(tracker, self.appearance, **(tracker_options or {}))
        self.tracklets = TrackletBuilder(index, max_gap)
        self.crops = self.untracked = 0

    def step(self, number: int) -> list:
        """Track frame `number` (if this camera has it); returns the tracklets that closed."""
        if number not in self.frames:
            return []
        frame = read_image(self.frames[number])
        dets = self.detections.get(number, np.zeros((0, 6), np.float32))
        # boxmot refuses boxes of zero width or height; boxes wholly outside the frame carry no appearance.
        h, w = frame.shape[:2]
        keep = ((dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1]) & (dets[:, 0] < w) & (dets[:, 1] < h)
                & (dets[:, 2] > 0) & (dets[:, 3] > 0))
        dets = dets[keep]
        tracks = self.tracker.update(dets, frame)
        ids = track_ids_of_detections(tracks, len(dets))
        emb, gender = self.appearance.features_of(dets[:, :4], frame)  # the rows the tracker used: no second pass
        self.crops += int((ids >= 0).sum())
        self.untracked += int((ids < 0).sum())
        ltwh = [(x1, y1, x2 - x1, y2 - y1) for x1, y1, x2, y2 in dets[:, :4].tolist()]
        return self.tracklets.add(number, ids, emb, gender, ltwh)


def add_tracklet(gallery: Gallery, tracklet, person: int) -> None:
    """Every crop of a tracklet into the gallery under its person id, with its camera and track id."""
    n = len(tracklet)
    gallery.add(np.stack(tracklet.embeddings), ids=[person] * n, cameras=[tracklet.camera] * n,
                gender_prob=tracklet.gender, times=tracklet.frames, tracks=[tracklet.track] * n,
                meta=[{"box": [round(v, 1) for v in box]} for box in tracklet.boxes])


def run(model: Path, cameras: list, output: str | Path, tracker: str = "botsort", min_conf: float = 0.0,
        match: float = 1.0, gender_margin: float = 0.25, max_gap: int = 30, tracker_options: dict | None = None,
        collection: str = "edgereid") -> dict:
    """Track every camera, match tracklets across cameras and save the gallery; returns a summary."""
    with Runtime(model) as rt:
        cams = [Camera(i, Path(folder), rt, tracker, min_conf, max_gap, tracker_options)
                for i, folder in enumerate(cameras)]
        matcher = IdentityMatcher(match, gender_margin)
        gallery = Gallery(dim=rt.metadata.embedding_dim)
        closed = []  # tracklets in the order they closed, which is the order they were given a person
        for number in sorted(set().union(*(c.frames for c in cams))):
            for cam in cams:
                for tracklet in cam.step(number):
                    add_tracklet(gallery, tracklet, matcher.assign(tracklet))
                    closed.append(tracklet)
        for tracklet in sorted((t for c in cams for t in c.tracklets.close_all()), key=lambda t: (t.last, t.camera)):
            add_tracklet(gallery, tracklet, matcher.assign(tracklet))
            closed.append(tracklet)
    save_gallery(gallery, output, collection=collection)  # Milvus, GalleryStore or .gallery: by name
    return {"crops": [c.crops for c in cams], "untracked": [c.untracked for c in cams], "closed": closed,
            "tracklets": len(matcher.assigned), "people": len(matcher.people), "gallery": gallery}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-camera boxmot trackers with edgereid features -> people "
                                                 "across cameras by tracklet.")
    parser.add_argument("model", type=Path)
    parser.add_argument("cameras", type=Path, nargs="+", help="MOT-style folders (img1/, det/det.txt)")
    parser.add_argument("-o", "--output", default="site.gallery",
                        help="a .gallery file, a GalleryStore (.sqlite/.db), NAME.milvus.db or a Milvus server URI")
    parser.add_argument("--collection", default="edgereid", help="the Milvus collection, when -o is Milvus")
    parser.add_argument("--tracker", default="botsort", help="botsort, strongsort, deepocsort, boosttrack, ...")
    parser.add_argument("--min-conf", type=float, default=0.0, help="drop detections below this confidence")
    parser.add_argument("--match", type=float, default=1.0,
                        help="max L2 distance tracklet -> person (depends on the model: calibrate it)")
    parser.add_argument("--gender-margin", type=float, default=0.25,
                        help="never join a tracklet and a person both this sure of opposite genders (0.5: off)")
    parser.add_argument("--max-gap", type=int, default=30, help="frames unseen before a track becomes a tracklet")
    args = parser.parse_args(argv)
    s = run(args.model, args.cameras, args.output, args.tracker, args.min_conf, args.match, args.gender_margin,
            args.max_gap, collection=args.collection)
    g = s["gallery"]
    print(f"{sum(s['crops'])} tracked crops from {len(s['crops'])} cameras ({s['crops']}; {sum(s['untracked'])} "
          f"not yet confirmed by the tracker) -> {s['tracklets']} tracklets -> {s['people']} people, "
          f"{int(np.sum(g.gender_prob >= 0.5))} crops female; saved {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
