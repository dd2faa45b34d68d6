"""Forensic search: "women, top 20 most like this crop" over a saved gallery or a GalleryStore (.sqlite/.db).

    python examples/forensic_search.py model.onnx site.gallery query.jpg [--gender female] [-k 20] [--rerank]

Prints rank, person id, camera, frame, distance and P(female) for each hit, closest first.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from edgereid import Runtime
from edgereid.retrieval.store import open_gallery


def search(model: Path, gallery_file: Path, query: Path, gender: str | None, k: int, rerank: bool) -> list:
    """The hits (edgereid.retrieval.gallery.Hit) for one query image, closest first."""
    gallery = open_gallery(gallery_file)  # a .gallery file or a durable GalleryStore
    with Runtime(model, max_batch=1) as rt:
        embedding = rt.infer_files([query]).embeddings[0]
    return gallery.search(embedding, k=k, gender=gender, rerank=rerank)


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Top-k gallery entries most like a query crop.")
    parser.add_argument("model", type=Path)
    parser.add_argument("gallery", type=Path)
    parser.add_argument("query", type=Path)
    parser.add_argument("--gender", choices=["female", "male", "any"], default="female")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (slower, often better)")
    args = parser.parse_args(argv)

    hits = search(args.model, args.gallery, args.query, None if args.gender == "any" else args.gender, args.k,
                  args.rerank)
    print(f"{'rank':>4} {'id':>6} {'camera':>6} {'frame':>7} {'distance':>9} {'P(female)':>9}")
    for rank, h in enumerate(hits, 1):
        print(f"{rank:4d} {h.id:6d} {h.camera:6d} {h.time:7.0f} {h.distance:9.4f} {h.gender_prob:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
