"""Reference implementations that tests check edgereid against and benchmarks time edgereid against: written
plainly from the papers and the public toolkits, slow on purpose. numpy only (torch where a model is touched).

Tests import this module as `benchmarks.references`; benchmark scripts as `references`.
"""
from __future__ import annotations

import numpy as np


def reference_re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The re_ranking() of person-re-ranking / torchreid / fast-reid, written plainly.

    Only change: argsort is stable, so exactly tied distances are ordered by index (the original's
    quicksort leaves that order unspecified).
    """
    original_dist = np.concatenate([np.concatenate([q_q_dist, q_g_dist], axis=1),
                                    np.concatenate([q_g_dist.T, g_g_dist], axis=1)], axis=0)
    query_num = q_g_dist.shape[0]
    jaccard_dist, original_dist = reference_jaccard(original_dist, query_num, k1, k2)
    final_dist = jaccard_dist * (1 - lambda_value) + original_dist * lambda_value
    return final_dist[:query_num, query_num:]


def reference_jaccard(dist, query_num, k1=20, k2=6):
    """The Jaccard part of reference_re_ranking over the (all_num, all_num) distance matrix `dist` of one set:
    (jaccard_dist, original_dist), both (query_num, all_num)."""
    original_dist = np.power(dist, 2).astype(np.float32)
    original_dist = np.transpose(1. * original_dist / np.max(original_dist, axis=0))
    V = np.zeros_like(original_dist).astype(np.float32)
    initial_rank = np.argsort(original_dist, kind="stable").astype(np.int32)
    all_num = len(dist)
    for i in range(all_num):
        forward_k_neigh_index = initial_rank[i, :k1 + 1]
        backward_k_neigh_index = initial_rank[forward_k_neigh_index, :k1 + 1]
        fi = np.where(backward_k_neigh_index == i)[0]
        k_reciprocal_index = forward_k_neigh_index[fi]
        k_reciprocal_expansion_index = k_reciprocal_index
        for j in range(len(k_reciprocal_index)):
            candidate = k_reciprocal_index[j]
            half = int(np.around(k1 / 2.)) + 1
            candidate_forward = initial_rank[candidate, :half]
            candidate_backward = initial_rank[candidate_forward, :half]
            fi_candidate = np.where(candidate_backward == candidate)[0]
            candidate_k_reciprocal_index = candidate_forward[fi_candidate]
            if len(np.intersect1d(candidate_k_reciprocal_index, k_reciprocal_index)) > \
                    2. / 3 * len(candidate_k_reciprocal_index):
                k_reciprocal_expansion_index = np.append(k_reciprocal_expansion_index, candidate_k_reciprocal_index)
        k_reciprocal_expansion_index = np.unique(k_reciprocal_expansion_index)
        weight = np.exp(-original_dist[i, k_reciprocal_expansion_index])
        V[i, k_reciprocal_expansion_index] = 1. * weight / np.sum(weight)
    original_dist = original_dist[:query_num, ]
    if k2 != 1:
        V_qe = np.zeros_like(V, dtype=np.float32)
        for i in range(all_num):
            V_qe[i, :] = np.mean(V[initial_rank[i, :k2], :], axis=0)
        V = V_qe
    invIndex = [np.where(V[:, i] != 0)[0] for i in range(all_num)]
    jaccard_dist = np.zeros_like(original_dist, dtype=np.float32)
    for i in range(query_num):
        temp_min = np.zeros(shape=[1, all_num], dtype=np.float32)
        indNonZero = np.where(V[i, :] != 0)[0]
        indImages = [invIndex[ind] for ind in indNonZero]
        for j in range(len(indNonZero)):
            temp_min[0, indImages[j]] = temp_min[0, indImages[j]] + np.minimum(V[i, indNonZero[j]],
                                                                               V[indImages[j], indNonZero[j]])
        jaccard_dist[i] = 1 - temp_min / (2. - temp_min)
    return jaccard_dist, original_dist


def reference_camera_jaccard(dist, cams, k1_intra=1, k1_inter=4, k2_intra=1, k2_inter=1):
    """CA-Jaccard (Chen et al., CVPR 2024) over one set, written plainly from the paper's algorithm: k-reciprocal
    neighbours on an intra-camera and an inter-camera ranking list (CKRNNs), exp(-d) weights over their union,
    query expansion over the k2_intra nearest of the own camera and the k2_inter nearest of the others (CLQE).
    Distances prepared as reference_jaccard does (squared, normalised per row), sorts stable."""
    d = np.power(dist, 2).astype(np.float32)
    d = np.transpose(1. * d / np.max(d, axis=0))
    same = cams[:, None] == cams[None, :]
    intra_rank = np.argsort(d + 999.0 * ~same, kind="stable")
    inter_rank = np.argsort(d + 999.0 * same, kind="stable")

    def k_reciprocal(rank, i, k):
        forward = rank[i, :k + 1]
        return forward[np.where(rank[forward, :k + 1] == i)[0]]

    n = len(d)
    V = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        idx = np.union1d(k_reciprocal(intra_rank, i, k1_intra), k_reciprocal(inter_rank, i, k1_inter))
        weight = np.exp(-d[i, idx])
        V[i, idx] = weight / np.sum(weight)
    V = np.stack([np.mean(V[np.append(intra_rank[i, :k2_intra], inter_rank[i, :k2_inter])], axis=0)
                  for i in range(n)])
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard[i] = 1 - temp_min / (2. - temp_min)
    return jaccard


def slow_reference(distmat, q_ids, g_ids, q_cams, g_cams, max_rank, mode):
    """Per-query loop in the style of the toolkits' eval_market1501, with a stable sort."""
    all_cmc, all_ap = [], []
    for i in range(len(q_ids)):
        order = np.argsort(distmat[i], kind="stable")
        ids, cams = g_ids[order], g_cams[order]
        keep = ids != -1
        if mode == "market1501":
            keep &= ~((ids == q_ids[i]) & (cams == q_cams[i]))
        elif mode == "multi_camera":
            keep &= cams != q_cams[i]
        raw = (ids[keep] == q_ids[i]).astype(np.int32)
        if not raw.any():
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        cmc = np.concatenate([cmc, np.full(max(0, max_rank - len(cmc)), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0) * raw
        all_ap.append(tmp.sum() / raw.sum())
    return np.mean(all_cmc, axis=0), float(np.mean(all_ap)), len(all_ap)


def randomize_norm_stats(model, seed: int = 0) -> None:
    """Give every BatchNorm/InstanceNorm random affine parameters and running stats (eval-mode parity
    with all-default statistics would hide a folding or ordering bug)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)):
            if m.weight is not None:
                m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
                m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.data = 0.1 * torch.randn(m.running_mean.shape, generator=g)
                m.running_var.data = 0.5 + torch.rand(m.running_var.shape, generator=g)
