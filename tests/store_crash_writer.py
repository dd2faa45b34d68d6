"""Crash-test writer: appends batches to a GalleryStore forever (or --batches times), printing each batch's last
id after add() returned, so the test knows which rows were committed when it SIGKILLs this process."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from edgereid.retrieval.store import GalleryStore


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--batches", type=int, default=0, help="stop after this many (0 = until killed)")
    a = ap.parse_args()
    store = GalleryStore(a.path, dim=16, dtype="int8")
    rng = np.random.default_rng()
    next_id = int(store.gallery.ids.max()) + 1 if len(store) else 0
    print("ready", flush=True)
    done = 0
    while not a.batches or done < a.batches:
        ids = np.arange(next_id, next_id + a.batch)
        store.add(rng.normal(size=(a.batch, 16)).astype(np.float32), ids=ids, times=ids.astype(float),
                  meta=[{"i": int(i)} for i in ids])
        sys.stdout.write(f"{ids[-1]}\n")
        sys.stdout.flush()
        next_id += a.batch
        done += 1
    store.close()


if __name__ == "__main__":
    main()
