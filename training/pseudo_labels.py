"""Pseudo-identities of a site's crops for `edgereid adapt`: clustering the model's embeddings (k-reciprocal
Jaccard distance + DBSCAN, on embeddings centred per camera), the counts a user can judge a clustering by, each
pseudo-identity's gender vote, and the memory of cluster centroids the fine-tuning contrasts against.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgereid.retrieval.camera_centring import centre_per_camera
from edgereid.retrieval.distances import l2_normalize


class ClusterMemory(nn.Module):
    """InfoNCE of L2-normalised features against one centroid per pseudo-identity, the centroids following
    the features that update them by momentum (cluster-contrast's ClusterMemory, without its hard mode).

    `presence` (clusters x cameras, bool) makes the negatives camera-aware: a crop is contrasted only with the
    clusters seen by its own camera. Early clusters rarely join cameras; without this, the same person's
    cluster in another camera would be pushed away, which teaches exactly the camera bias to be removed.
    """

    def __init__(self, centroids: torch.Tensor, temperature: float, momentum: float,
                 presence: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("features", F.normalize(centroids.float(), dim=1))
        self.presence = presence
        self.temperature, self.momentum = temperature, momentum

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        logits = F.normalize(feats, dim=1) @ self.features.t() / self.temperature
        if self.presence is not None and cams is not None:
            allowed = self.presence[:, cams].t().clone()
            allowed[torch.arange(len(labels)), labels] = True
            logits = logits.masked_fill(~allowed, float("-inf"))
        return F.cross_entropy(logits, labels)

    @torch.no_grad()
    def update(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Move each sample's centroid towards it (after the backward pass, which needs the old centroids)."""
        for f, y in zip(F.normalize(feats.detach(), dim=1), labels.tolist()):
            self.features[y] = F.normalize(self.momentum * self.features[y] + (1.0 - self.momentum) * f, dim=0)


def pseudo_identities(emb: np.ndarray, camids: np.ndarray, cfg, tracks: np.ndarray | None = None) -> np.ndarray:
    """DBSCAN labels (-1 = noise) of the crops, on the (camera-aware) Jaccard distance of their (camera-centred)
    embeddings; `cfg` is the AdaptConfig (camera_centring, camera_jaccard, k1, k2, k1_intra, k1_inter, k2_intra,
    k2_inter, eps, min_samples).

    With `tracks` (one id per crop, one person per track) the tracks are what is clustered: each a point at the
    mean of its crops' embeddings, on its camera. A track in a cluster gives it all its crops; a track of two or
    more crops that joins no cluster is a pseudo-identity of its own (its crops are one person whatever the
    distances say); a lone single-crop track is noise."""
    feats = centre_per_camera(emb, camids) if cfg.camera_centring else emb
    if tracks is None:
        return _cluster(feats, camids, cfg)
    ids, inverse, sizes = np.unique(tracks, return_inverse=True, return_counts=True)
    means = np.zeros((len(ids), feats.shape[1]), dtype=np.float64)
    np.add.at(means, inverse, feats)
    track_cams = np.zeros(len(ids), dtype=np.asarray(camids).dtype)
    track_cams[inverse] = camids
    per_track = _cluster(l2_normalize((means / sizes[:, None]).astype(np.float32)), track_cams, cfg)
    alone = np.flatnonzero((per_track < 0) & (sizes >= 2))
    per_track[alone] = num_clusters(per_track) + np.arange(len(alone))
    return per_track[inverse]


def _cluster(feats: np.ndarray, camids: np.ndarray, cfg) -> np.ndarray:
    from edgereid.retrieval.clustering import dbscan

    if cfg.camera_jaccard and len(np.unique(camids)) > 1:
        from edgereid.retrieval.camera_jaccard import camera_aware_jaccard_distance

        dist = camera_aware_jaccard_distance(feats, camids, cfg.k1_intra, cfg.k1_inter, cfg.k2_intra, cfg.k2_inter)
    else:
        from edgereid.retrieval.reranking import jaccard_distance

        dist = jaccard_distance(feats, k1=min(cfg.k1, len(feats) - 1), k2=cfg.k2)
    return dbscan(dist, cfg.eps, cfg.min_samples)


def num_clusters(labels: np.ndarray) -> int:
    """Pseudo-identities in DBSCAN labels (0..C-1; -1 = noise)."""
    return int(labels.max()) + 1 if (labels >= 0).any() else 0


def gender_votes(labels: np.ndarray, prob: np.ndarray, margin: float) -> tuple:
    """(target, weight) per pseudo-identity 0..C-1: 1 where the mean P(female) of its crops is above 0.5;
    weight 1 where that mean is at least `margin` from 0.5, else 0 (an undecided person teaches nothing)."""
    mean = np.array([prob[labels == c].mean() for c in range(num_clusters(labels))], dtype=np.float32)
    return (mean > 0.5).astype(np.float32), (np.abs(mean - 0.5) >= margin).astype(np.float32)


def cluster_summary(labels: np.ndarray, camids: np.ndarray, prob: np.ndarray) -> dict:
    """Counts a user can judge a clustering by (no ground truth needed)."""
    ids = np.unique(labels[labels >= 0])
    sizes = np.array([(labels == c).sum() for c in ids]) if len(ids) else np.zeros(0)
    multi = sum(len(np.unique(camids[labels == c])) > 1 for c in ids)
    calls = prob > 0.5
    split = sum(0 < calls[labels == c].mean() < 1 for c in ids)  # clusters whose crops get both genders
    return {"clusters": int(len(ids)), "clustered": int((labels >= 0).sum()), "noise": int((labels < 0).sum()),
            "mean_size": float(sizes.mean()) if len(sizes) else 0.0,
            "multi_camera_clusters": int(multi), "gender_split_clusters": int(split),
            "gender_confident": float((np.abs(prob - 0.5) >= 0.25).mean()), "female_calls": float(calls.mean())}
