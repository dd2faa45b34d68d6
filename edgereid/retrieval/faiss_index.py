"""Approximate nearest-neighbour indexes (FAISS HNSW or IVF-PQ) over a gallery's rows, appended to in place."""
from __future__ import annotations

import numpy as np

from edgereid.errors import InvalidInputError

KINDS = ("hnsw", "ivfpq")
HNSW_M = 16  # graph degree: 32 doubles the build time (~80 s for 10^6 rows on 2 cores) for little recall
# construction beam: FAISS's default 40 gave recall@10 0.83 on 10^6 clustered rows (efSearch 256), 128 gave 0.998
# for 2.9x the build time (255 s vs 87 s on 2 cores; benchmarks/results/ann_cpu.json)
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 256  # 64 gave recall@10 0.58 on 10^6 clustered rows: small tight clusters need a wide beam
IVF_TRAIN_MAX = 100000  # k-means on more rows than this changes the centroids little and costs minutes

# lists probed of <= 1024: on 10^6 clustered rows recall@10 was 0.82 / 0.91 / 0.96 / 0.99 at 32 / 64 / 128 / 256
IVF_NPROBE = 128
# An IVF-PQ index is retrained (rebuilt from every row) once the gallery holds this many times the rows it was
# trained on: its lists (~4 sqrt(n)) would otherwise grow long and its centroids stop covering newer people.
IVF_RETRAIN_GROWTH = 4


def train_positions(n: int, seed: int = 0) -> np.ndarray:
    """Sorted positions of the rows an index over n rows trains on: all, or IVF_TRAIN_MAX spread over the gallery."""
    if n <= IVF_TRAIN_MAX:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, IVF_TRAIN_MAX, replace=False))


def _ivf_lists(n: int) -> int:
    """Inverted lists for n rows: ~4 sqrt(n), at most 1024 (k-means time on small CPUs), >= 39 rows per list."""
    return int(max(1, min(4 * np.sqrt(n), n // 39, 1024)))


class AnnIndex:
    """A FAISS index keyed by the gallery's row keys (int64, ascending, never reused): rows are appended, and
    removed in place from IVF-PQ (HNSW graphs cannot remove: the gallery rebuilds those)."""

    def __init__(self, kind: str, dim: int) -> None:
        if kind not in KINDS:
            raise InvalidInputError(f"ANN index kind must be one of {', '.join(KINDS)}, got {kind!r}")
        from edgereid._optional import require
        self.faiss = require("faiss", f"Gallery(index={kind!r})")
        self.kind, self.dim = kind, int(dim)
        self.index = None
        self.trained_rows = 0  # gallery rows when the index was built (IVF-PQ trains its lists then)
        self.last_key = -1  # the largest row key added: rows with larger keys are the gallery's new tail

    @property
    def ntotal(self) -> int:
        """Rows indexed so far."""
        return 0 if self.index is None else int(self.index.ntotal)

    def outgrown(self, n: int) -> bool:
        """True when a gallery of n rows should rebuild this index (IVF-PQ grown IVF_RETRAIN_GROWTH x since training)."""
        return self.kind == "ivfpq" and self.trained_rows > 0 and n >= IVF_RETRAIN_GROWTH * self.trained_rows

    def _build(self, x: np.ndarray, total: int):
        f = self.faiss
        if self.kind == "hnsw":
            graph = f.IndexHNSWFlat(self.dim, HNSW_M)
            graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self._graph = graph  # the map does not own it: keep it alive, and reachable for efSearch
            return f.IndexIDMap(graph)  # HNSW has no ids of its own: the map keeps the row keys
        # PQ with 8-bit codes needs >= 256 training rows; 16 sub-quantisers of 8 dims each for 128-d
        if total < 256:
            raise InvalidInputError(f"index='ivfpq' needs >= 256 rows to train, the gallery has {total}; "
                                    "use index='auto' or 'hnsw' for small galleries")
        m = next(m for m in (16, 8, 4, 2, 1) if self.dim % m == 0)
        index = f.IndexIVFPQ(f.IndexFlatL2(self.dim), self.dim, _ivf_lists(total), m, 8)
        index.train(x)
        return index

    def train(self, sample: np.ndarray, total: int) -> None:
        """Build the index for a gallery of `total` rows; IVF-PQ learns its lists and codes from `sample`."""
        self.index = self._build(np.ascontiguousarray(sample, dtype=np.float32), int(total))
        self.trained_rows = int(total)

    def add(self, x: np.ndarray, keys: np.ndarray) -> None:
        """Append rows (float32, already normalised for the cosine metric) under their row keys (ascending, above
        every key added before); untrained, the index trains on them first."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        keys = np.ascontiguousarray(keys, dtype=np.int64)
        if self.index is None:
            self.train(x, len(x))
        self.index.add_with_ids(x, keys)
        if len(keys):
            self.last_key = int(keys[-1])

    @property
    def can_remove(self) -> bool:
        """IVF-PQ removes rows in place; an HNSW graph cannot."""
        return self.kind == "ivfpq"

    def remove(self, keys: np.ndarray) -> None:
        """Drop rows by key (IVF-PQ only: a scan of the inverted lists, no retraining)."""
        if self.index is not None and len(keys):
            self.index.remove_ids(self.faiss.IDSelectorBatch(np.ascontiguousarray(keys, dtype=np.int64)))

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        """Candidate row keys (queries x k), nearest first by the index's own (approximate) distance; -1 = none."""
        k = max(1, min(int(k), self.ntotal))
        if self.kind == "hnsw":
            self._graph.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        else:
            self.index.nprobe = min(IVF_NPROBE, self.index.nlist)
        _, i = self.index.search(np.ascontiguousarray(q, dtype=np.float32), k)
        return i.astype(np.int64)
