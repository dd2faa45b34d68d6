"""Camera-aware Jaccard distance (CA-Jaccard): the clustering distance that lets `edgereid adapt` join cameras."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.camera_jaccard import camera_aware_jaccard_distance
from edgereid.retrieval.clustering import dbscan
from edgereid.retrieval.reranking import jaccard_distance


def _people(num_people: int = 12, crops: int = 3, cameras: int = 3, camera_shift: float = 0.0, seed: int = 0):
    """Unit embeddings of people seen by every camera; `camera_shift` adds a camera's own direction to each of its
    crops (what a model that never saw the site does: light and background weigh more than the person)."""
    rng = np.random.default_rng(seed)
    people = rng.normal(size=(num_people, 32))
    shifts = rng.normal(size=(cameras, 32))
    x, pids, cams = [], [], []
    for p in range(num_people):
        for c in range(cameras):
            for _ in range(crops):
                x.append(people[p] + camera_shift * shifts[c] + 0.25 * rng.normal(size=32))
                pids.append(p)
                cams.append(c)
    x = np.array(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.array(pids), np.array(cams)


@pytest.mark.parametrize("k", [(1, 4, 1, 1), (5, 20, 2, 4), (2, 6, 1, 2), (0, 3, 1, 0), (3, 5, 0, 2)])
def test_camera_jaccard_equals_the_plainly_written_reference(k):
    from benchmarks.references import reference_camera_jaccard
    from edgereid.retrieval.distances import pairwise_distance

    x, _, cams = _people(camera_shift=0.5, seed=sum(k))
    got = camera_aware_jaccard_distance(x, cams, *k)
    want = reference_camera_jaccard(pairwise_distance(x, x, metric="euclidean").astype(np.float64), cams, *k)
    assert got.shape == (len(x), len(x)) and got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-5)
    assert np.allclose(np.diag(got), 0, atol=1e-6)


def test_camera_jaccard_clusters_join_cameras_where_plain_jaccard_keeps_them_apart():
    """With a strong camera bias, the plain Jaccard's neighbours are all of one camera, so no cluster spans two;
    the camera-aware one forms clusters across cameras that hold one person each."""
    x, pids, cams = _people(camera_shift=1.2, seed=3)

    def spanning_and_purity(labels):
        ids = [c for c in np.unique(labels) if c >= 0]
        spanning = sum(len(np.unique(cams[labels == c])) > 1 for c in ids)
        pure = sum(len(np.unique(pids[labels == c])) == 1 for c in ids)
        return spanning, pure, len(ids)

    plain = spanning_and_purity(dbscan(jaccard_distance(x, k1=6, k2=3), 0.4, 2))
    aware = spanning_and_purity(dbscan(camera_aware_jaccard_distance(x, cams), 0.4, 2))
    assert plain[0] == 0
    assert aware[0] >= 6 and aware[1] >= 0.8 * aware[2]


def test_camera_jaccard_refuses_bad_arguments():
    x, _, cams = _people(num_people=3)
    with pytest.raises(InvalidInputError, match="camids has 2 entries"):
        camera_aware_jaccard_distance(x, cams[:2])
    with pytest.raises(InvalidInputError, match="k1_inter"):
        camera_aware_jaccard_distance(x, cams, k1_inter=0)
    with pytest.raises(InvalidInputError, match="k2_intra \\+ k2_inter"):
        camera_aware_jaccard_distance(x, cams, k2_intra=0, k2_inter=0)
    with pytest.raises(InvalidInputError, match="metric"):
        camera_aware_jaccard_distance(x, cams, metric="manhattan")
    assert camera_aware_jaccard_distance(x[:0], cams[:0]).shape == (0, 0)


def test_adapt_clusters_on_the_camera_aware_distance_when_asked():
    """`edgereid adapt` clusters on CA-Jaccard when the cameras are known (the default; `--set camera_jaccard=false`
    for the plain Jaccard distance); with one camera it falls back to the plain one."""
    pytest.importorskip("torch")
    from edgereid.training.adapt import AdaptConfig
    from edgereid.training.pseudo_labels import cluster_summary, pseudo_identities

    x, pids, cams = _people(camera_shift=1.2, seed=3)
    prob = np.full(len(x), 0.5, dtype=np.float32)
    assert AdaptConfig().camera_jaccard
    plain = AdaptConfig().update({"camera_centring": False, "camera_jaccard": False})
    aware = AdaptConfig().update({"camera_centring": False})
    assert cluster_summary(pseudo_identities(x, cams, plain), cams, prob)["multi_camera_clusters"] == 0
    assert cluster_summary(pseudo_identities(x, cams, aware), cams, prob)["multi_camera_clusters"] >= 6
    one_camera = np.zeros_like(cams)
    assert (pseudo_identities(x, one_camera, aware) == pseudo_identities(x, one_camera, plain)).all()
