"""Embed every crop image in a folder: OUT.npy (N x D float32 embeddings) + OUT.csv (file, gender, probability).

    python examples/embed_folder.py model.onnx crops/ -o embeddings [--batch 16]

Row i of the .npy belongs to row i of the CSV. Only the runtime is needed (numpy, OpenCV, onnxruntime).
"""
from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

from edgereid import Runtime
from edgereid.imageio import IMAGE_SUFFIXES, list_images


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description="Embed a folder of person crops.")
    parser.add_argument("model", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("embeddings"), help="prefix for .npy and .csv")
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)

    files = list_images(args.folder)
    if not files:
        parser.error(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {args.folder}")
    with Runtime(args.model, max_batch=args.batch) as rt:
        out = rt.infer_files(files)  # reads and runs max_batch files at a time
        positive = rt.metadata.gender_positive_class

    npy, table = args.output.with_suffix(".npy"), args.output.with_suffix(".csv")
    npy.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the target and rename, so a crash never leaves a half-written file behind.
    with open(str(npy) + ".tmp", "wb") as f:
        np.save(f, out.embeddings)
    os.replace(str(npy) + ".tmp", npy)
    with open(str(table) + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", "file", "gender", f"p_{positive}"])
        for i, (path, label, prob) in enumerate(zip(files, out.gender_labels, out.gender_prob)):
            writer.writerow([i, path.name, label, f"{prob:.4f}"])
    os.replace(str(table) + ".tmp", table)
    print(f"{len(files)} crops -> {npy} {out.embeddings.shape}, {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
