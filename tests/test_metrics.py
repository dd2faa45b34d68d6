"""CMC / mAP against a hand-worked example and a slow per-query reference; the gender report by hand."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.metrics import evaluate, gender_report
from benchmarks.references import slow_reference

# Gallery: g0 id1 cam1, g1 id2 cam2, g2 id1 cam2, g3 id0 (distractor) cam2, g4 id1 cam3, g5 id-1 (junk) cam2,
#          g6 id3 cam1. Query 0 is id1 cam1, query 1 is id2 cam2.
G_IDS = np.array([1, 2, 1, 0, 1, -1, 3])
G_CAMS = np.array([1, 2, 2, 2, 3, 2, 1])
Q_IDS = np.array([1, 2])
Q_CAMS = np.array([1, 2])
DIST = np.array([[.10, .20, .50, .30, .80, .05, .15],
                 [.90, .40, .10, .20, .60, .70, .30]])


def test_hand_worked_market1501():
    # q0: g0 (same id+cam) and g5 (junk) removed -> g6 w, g1 w, g3 w, g2 match@4, g4 match@5
    # q1: its only same-id item g1 shares its camera -> no valid match, query skipped
    r = evaluate(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, max_rank=7)
    assert r.num_valid_queries == 1 and r.num_queries == 2
    assert r.mAP == pytest.approx((1 / 4 + 2 / 5) / 2)
    np.testing.assert_allclose(r.cmc, [0, 0, 0, 1, 1, 1, 1])
    assert r.mINP == pytest.approx(2 / 5)


def test_hand_worked_single_and_multi_camera_differ_as_defined():
    # single_camera: no camera removal. q0: g0 m@1, g6 w, g1 w, g3 w, g2 m@5, g4 m@6; q1: g2, g3, g6 w, g1 m@4
    single = evaluate(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, max_rank=7, mode="single_camera")
    assert single.num_valid_queries == 2
    assert single.mAP == pytest.approx(((1 + 2 / 5 + 3 / 6) / 3 + 1 / 4) / 2)
    np.testing.assert_allclose(single.cmc[:4], [.5, .5, .5, 1])
    # multi_camera: every cam-1 item removed for q0 (g0 and the distractor g6) -> g1 w, g3 w, g2 m@3, g4 m@4
    multi = evaluate(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, max_rank=7, mode="multi_camera")
    assert multi.num_valid_queries == 1
    assert multi.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)
    np.testing.assert_allclose(multi.cmc[:4], [0, 0, 1, 1])
    assert multi.rank(1) == 0 and single.rank(1) == 0.5


@pytest.mark.parametrize("mode", ["market1501", "single_camera", "multi_camera"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_slow_reference(mode, seed):
    rng = np.random.default_rng(seed)
    nq, ng = 40, 130
    g_ids = rng.integers(-1, 12, size=ng)
    g_cams = rng.integers(1, 4, size=ng)
    q_ids = rng.integers(1, 12, size=nq)
    q_cams = rng.integers(1, 4, size=nq)
    dist = np.round(rng.random((nq, ng)), 2)  # rounding creates ties, ordered by index
    dist += 0.3 * (q_ids[:, None] != g_ids[None, :])  # a model that is better than chance
    cmc, m_ap, n = slow_reference(dist, q_ids, g_ids, q_cams, g_cams, 50, mode)
    r = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=50, mode=mode, block_rows=7)
    assert r.num_valid_queries == n
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-12)
    assert r.mAP == pytest.approx(m_ap, abs=1e-12)
    assert r.ranks[1] == pytest.approx(cmc[0]) and r.ranks[50] == pytest.approx(cmc[49])


def test_cuhk03_single_shot():
    rng = np.random.default_rng(3)
    q_ids = np.arange(10)
    q_cams = np.zeros(10, int)
    # one gallery sample per id: single-shot sampling has nothing to choose, so it equals the Market protocol
    g_ids, g_cams = np.arange(10), np.ones(10, int)
    dist = rng.random((10, 10))
    a = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10, mode="cuhk03")
    b = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10)
    np.testing.assert_allclose(a.cmc, b.cmc)
    # several samples per id, all of one id at the same distance: whichever sample is drawn, single-shot CMC
    # equals the CMC over one sample per id, while the Market CMC counts all four copies of each wrong id
    g_ids, g_cams = np.repeat(np.arange(10), 4), np.ones(40, int)
    c = evaluate(np.repeat(dist, 4, axis=1), q_ids, g_ids, q_cams, g_cams, max_rank=10, mode="cuhk03")
    np.testing.assert_allclose(c.cmc, b.cmc)
    m = evaluate(np.repeat(dist, 4, axis=1), q_ids, g_ids, q_cams, g_cams, max_rank=10)
    assert m.cmc[4] < c.cmc[4]
    # random distances: seeded, so repeatable; mAP uses the full gallery and stays the Market value
    dist = rng.random((10, 40))
    c1 = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10, mode="cuhk03", seed=7)
    c2 = evaluate(dist, q_ids, g_ids, q_cams, g_cams, max_rank=10, mode="cuhk03", seed=7)
    np.testing.assert_array_equal(c1.cmc, c2.cmc)
    assert c1.mAP == pytest.approx(evaluate(dist, q_ids, g_ids, q_cams, g_cams).mAP)
    assert c1.cmc[-1] == 1.0  # ten ids, ten ranks: every query's match is within them


def test_bad_inputs():
    with pytest.raises(InvalidInputError, match="mode"):
        evaluate(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, mode="viper")
    with pytest.raises(InvalidInputError, match="g_ids"):
        evaluate(DIST, Q_IDS, G_IDS[:3], Q_CAMS, G_CAMS)
    with pytest.raises(InvalidInputError, match="no query"):
        evaluate(DIST[1:], Q_IDS[1:], G_IDS, Q_CAMS[1:], G_CAMS)


def test_gender_report_by_hand():
    # truth: m m m f f f f ; predicted: m f m f f m f  -> male: tp 2, pred 3, true 3; female: tp 3, pred 4, true 4
    t = [0, 0, 0, 1, 1, 1, 1]
    prob = [0.1, 0.8, 0.3, 0.9, 0.6, 0.2, 0.7]
    r = gender_report(t, prob)
    np.testing.assert_allclose(r.precision, [2 / 3, 3 / 4])
    np.testing.assert_allclose(r.recall, [2 / 3, 3 / 4])
    np.testing.assert_allclose(r.f1, [2 / 3, 3 / 4])
    np.testing.assert_array_equal(r.support, [3, 4])
    assert r.accuracy == pytest.approx(5 / 7)
    assert r.macro[0] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert r.weighted[2] == pytest.approx((3 * 2 / 3 + 4 * 3 / 4) / 7)
    lines = r.table().splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["male", "0.6667", "0.6667", "0.6667", "3"]
    assert lines[5].split() == ["accuracy", "0.7143", "7"]
    # a class never predicted: precision reads 0 rather than dividing by zero
    r0 = gender_report([0, 1, 1], [0, 0, 0])
    assert r0.precision[1] == 0 and r0.recall[1] == 0 and r0.recall[0] == 1
