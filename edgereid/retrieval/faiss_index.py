"""Approximate nearest-neighbour indexes (FAISS HNSW or IVF-PQ) over a gallery's rows, appended to in place."""
from __future__ import annotations

import numpy as np

from edgereid.errors import InvalidInputError

KINDS = ("hnsw", "ivfpq")
HNSW_M = 16  # graph degree: 32 doubles the build time (~80 s for 10^6 rows on 2 cores) for little recall
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 256  # 64 gave recall@10 0.58 on 10^6 clustered rows: small tight clusters need a wide beam
IVF_TRAIN_MAX = 100000  # k-means on more rows than this changes the centroids little and costs minutes
# lists probed of <= 1024: on 10^6 clustered rows recall@10 was 0.82 / 0.91 / 0.96 / 0.99 at 32 / 64 / 128 / 256
IVF_NPROBE = 128


def _ivf_lists(n: int) -> int:
    """Inverted lists for n rows: ~4 sqrt(n), at most 1024 (k-means time on small CPUs), >= 39 rows per list."""
    return int(max(1, min(4 * np.sqrt(n), n // 39, 1024)))


class AnnIndex:
    """A FAISS index whose ids are gallery positions 0..n-1; rows are only ever appended (removal = rebuild)."""

    def __init__(self, kind: str, dim: int) -> None:
        if kind not in KINDS:
            raise InvalidInputError(f"ANN index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        from edgereid._optional import require
        self.faiss = require("faiss", f"Gallery(index={kind!r})")
        self.kind, self.dim = kind, int(dim)
        self.index = None

    @property
    def ntotal(self) -> int:
        """Rows indexed so far."""
        return 0 if self.index is None else int(self.index.ntotal)

    def _build(self, x: np.ndarray):
        f = self.faiss
        if self.kind == "hnsw":
            index = f.IndexHNSWFlat(self.dim, HNSW_M)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            return index
        # PQ with 8-bit codes needs >= 256 training rows; 16 sub-quantisers of 8 dims each for 128-d
        if len(x) < 256:
            raise InvalidInputError(f"index='ivfpq' needs >= 256 rows to train, the gallery has {len(x)}; "
                                    "use index='auto' or 'hnsw' for small galleries")
        m = next(m for m in (16, 8, 4, 2, 1) if self.dim % m == 0)
        index = f.IndexIVFPQ(f.IndexFlatL2(self.dim), self.dim, _ivf_lists(len(x)), m, 8)
        sample = x if len(x) <= IVF_TRAIN_MAX else x[np.random.default_rng(0).choice(len(x), IVF_TRAIN_MAX,
                                                                                      replace=False)]
        index.train(sample)
        return index

    def add(self, x: np.ndarray) -> None:
        """Append rows (float32, already normalised for the cosine metric); the first call builds/trains."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.index is None:
            self.index = self._build(x)
        self.index.add(x)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        """Candidate positions (queries x k), nearest first by the index's own (approximate) distance; -1 = none."""
        k = max(1, min(int(k), self.ntotal))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        else:
            self.index.nprobe = min(IVF_NPROBE, self.index.nlist)
        _, i = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return i.astype(np.int64)
