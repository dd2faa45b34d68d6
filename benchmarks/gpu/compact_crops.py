"""A compact copy of the training crops for a GPU machine that takes at most 64 MiB of files: CUHK03 labeled/train
and the PETA subsets the real-data runs train on, each image shrunk to fit 256x128 (the training size; smaller
crops are kept as they are) and re-encoded as WebP at `--quality`, under its own file name (OpenCV decodes by
content), with PETA's Label.txt files copied. About 46 MiB at quality 75.

    python benchmarks/gpu/compact_crops.py --cuhk03 ~/data/cuhk03/labeled/train \
        --peta "~/data/peta/PETA dataset" --out .gpudata
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

PETA_SUBSETS = ["3DPeS", "CAVIAR4REID", "SARC3D", "TownCentre", "i-LID", "MIT"]


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--peta", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quality", type=int, default=75)
    args = ap.parse_args(argv)
    jobs = [(args.cuhk03.expanduser(), args.out / "cuhk03/labeled/train")]
    jobs += [(args.peta.expanduser() / s / "archive", args.out / "peta" / s / "archive") for s in PETA_SUBSETS]
    total = count = 0
    for src, dst in jobs:
        dst.mkdir(parents=True, exist_ok=True)
        for f in sorted(src.iterdir()):
            if f.suffix.lower() == ".txt":
                shutil.copy(f, dst / f.name)
                continue
            img = cv2.imread(str(f))
            if img is None:
                print(f"skipped (not an image): {f}")
                continue
            if img.shape[0] > 256 or img.shape[1] > 128:
                img = cv2.resize(img, (128, 256), interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, args.quality])
            (dst / f.name).write_bytes(buf.tobytes())
            total, count = total + len(buf), count + 1
    print(f"{count} crops, {total / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
