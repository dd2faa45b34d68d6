"""Forensic search: "women, top 20 most like this crop" over a saved gallery, a GalleryStore (.sqlite/.db) or a
Milvus collection (a milvus-lite file NAME.milvus.db, or a server URI http://, https://, tcp://).

    python examples/forensic_search.py model.onnx site.gallery query.jpg [--gender female] [-k 20] [--rerank]
    python examples/forensic_search.py model.onnx http://milvus:19530 query.jpg --collection edgereid

Prints rank, person id, camera, frame, distance and P(female) for each hit, closest first.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from edgereid import Runtime
from edgereid.retrieval.gallery_paths import open_gallery


def search(model: Path, gallery_file: str, query: Path, gender: str | None, k: int, rerank: bool,
           collection: str = "edgereid") -> list:
    """The hits (edgereid.retrieval.gallery.Hit) for one query image, closest first."""
    with Runtime(model, max_batch=1) as rt:
        embedding = rt.infer_files([query]).embeddings[0]
    # a .gallery file, a durable GalleryStore or a MilvusGallery (collection is used for Milvus only)
    gallery = open_gallery(gallery_file, collection=collection)
    try:
        return gallery.search(embedding, k=k, gender=gender, rerank=rerank)
    finally:
        if hasattr(gallery, "close"):  # a store or Milvus client holds its file until closed
            gallery.close()


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Top-k gallery entries most like a query crop.")
    parser.add_argument("model", type=Path)
    parser.add_argument("gallery", help="a .gallery/.sqlite/.db file, NAME.milvus.db or a Milvus server URI")
    parser.add_argument("query", type=Path)
    parser.add_argument("--gender", choices=["female", "male", "any"], default="female")
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (slower, often better)")
    parser.add_argument("--collection", default="edgereid", help="the Milvus collection, for a Milvus gallery")
    args = parser.parse_args(argv)

    hits = search(args.model, args.gallery, args.query, None if args.gender == "any" else args.gender, args.k,
                  args.rerank, args.collection)
    print(f"{'rank':>4} {'id':>6} {'camera':>6} {'frame':>7} {'distance':>9} {'P(female)':>9}")
    for rank, h in enumerate(hits, 1):
        print(f"{rank:4d} {h.id:6d} {h.camera:6d} {h.time:7.0f} {h.distance:9.4f} {h.gender_prob:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
