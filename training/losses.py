"""Training losses: label-smoothed CE, batch-hard triplet, center, circle, and the per-task combinations.

The re-ID recipe is the "Bag of Tricks" one (Luo et al., 2019): identity CE with label smoothing on the
BN-neck output, batch-hard triplet and center loss on the pre-BN feature; the seed's "triplet query" or
circle loss (Sun et al., 2020) can replace the batch-hard triplet. Gender = BCE-with-logits on the logit + triplet on the gender feature.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgereid.errors import InvalidInputError


class CrossEntropyLabelSmooth(nn.Module):
    """CE against targets (1 - eps) * onehot + eps / K (Szegedy et al., 2016)."""

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits, dim=1)
        smooth = torch.full_like(log_probs, self.epsilon / self.num_classes)
        smooth.scatter_(1, targets.unsqueeze(1), 1.0 - self.epsilon + self.epsilon / self.num_classes)
        return -(smooth * log_probs).sum(dim=1).mean()


def pairwise_euclidean(x: torch.Tensor) -> torch.Tensor:
    """(N,N) euclidean distances; clamped before sqrt so the gradient at 0 stays finite."""
    sq = (x * x).sum(dim=1, keepdim=True)
    d2 = sq + sq.t() - 2.0 * x @ x.t()
    return d2.clamp_min(1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet (Hermans et al., 2017): per anchor, the farthest positive and the nearest negative.

    `margin=None` gives the soft-margin form log(1 + exp(d_ap - d_an)). Anchors without a positive or a
    negative in the batch are skipped (a P x K batch with K >= 2 always has both).
    """

    def __init__(self, margin: float | None = 0.3, normalize: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.normalize = normalize

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor | None = None) -> torch.Tensor:
        """With `cams`, an anchor's negatives come from its own camera only (pseudo-identities that rarely join
        cameras: another camera's cluster may be the same person, and pushing it away teaches camera bias)."""
        if self.normalize:
            feats = F.normalize(feats, dim=1)
        dist = pairwise_euclidean(feats)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=feats.device)
        neg = ~same if cams is None else ~same & (cams.unsqueeze(0) == cams.unsqueeze(1))
        return hardest_triplet(dist, same & ~eye, neg, self.margin, feats)


def hardest_triplet(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float | None,
                    feats: torch.Tensor) -> torch.Tensor:
    """Mean over anchors of relu(farthest positive - nearest negative + margin) (softplus without a margin);
    anchors lacking a positive or a negative in their masks are skipped."""
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not valid.any():
        return feats.sum() * 0.0
    d_ap = dist.masked_fill(~pos, float("-inf")).max(dim=1).values[valid]
    d_an = dist.masked_fill(~neg, float("inf")).min(dim=1).values[valid]
    if margin is None:
        return F.softplus(d_ap - d_an).mean()
    return F.relu(d_ap - d_an + margin).mean()


def instance_positions(labels: torch.Tensor) -> torch.Tensor:
    """Each sample's position among its identity's samples in batch order (0 for the first, 1 for the next...)."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    return torch.tril(same, diagonal=-1).sum(dim=1)


class QueryTripletLoss(nn.Module):
    """The seed's "triplet query": instances eliminated position by position, a triplet over those left.

    For each position k of a P x K batch, the k-th instance of every identity is a query and all instances at
    position k leave the batch; each query's farthest same-identity instance and nearest other-identity
    instance are taken among the remaining ones, as a retrieval query sees a gallery it is not part of. Unlike
    the batch-hard triplet, the other queries of the same round are never a query's negatives. Averaged over
    every query of every round (each instance is a query once).
    """

    def __init__(self, margin: float | None = 0.3) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        dist = pairwise_euclidean(feats)
        position = instance_positions(labels)
        left = position.unsqueeze(0) != position.unsqueeze(1)  # [i, j]: j is still there when i is the query
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        return hardest_triplet(dist, same & left, ~same & left, self.margin, feats)


class CenterLoss(nn.Module):
    """Mean squared distance of each feature to its class centre (Wen et al., 2016; BoT's form).

    The centres are parameters; give them their own optimizer group (BoT: SGD, lr 0.5).
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        diff = feats - self.centers[labels]
        return (diff * diff).sum(dim=1).clamp(1e-12, 1e12).mean()


class CircleLoss(nn.Module):
    """Pair-wise circle loss (Sun et al., 2020) on cosine similarities, averaged over anchors.

    For anchor i: s_p over its positives, s_n over its negatives,
    loss_i = softplus(logsumexp_n(gamma * a_n * (s_n - m)) + logsumexp_p(-gamma * a_p * (s_p - 1 + m)))
    with a_p = relu(1 + m - s_p), a_n = relu(s_n + m) (detached weights, as in the paper's reference code).
    """

    def __init__(self, margin: float = 0.25, gamma: float = 64.0) -> None:
        super().__init__()
        self.margin = margin
        self.gamma = gamma

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(feats, dim=1)
        sim = x @ x.t()
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=feats.device)
        pos, neg = same & ~eye, ~same
        valid = pos.any(dim=1) & neg.any(dim=1)
        if not valid.any():
            return feats.sum() * 0.0
        m = self.margin
        a_p = F.relu(1.0 + m - sim.detach())
        a_n = F.relu(sim.detach() + m)
        logit_p = (-self.gamma * a_p * (sim - (1.0 - m))).masked_fill(~pos, float("-inf"))
        logit_n = (self.gamma * a_n * (sim - m)).masked_fill(~neg, float("-inf"))
        loss = F.softplus(torch.logsumexp(logit_n, dim=1) + torch.logsumexp(logit_p, dim=1))
        return loss[valid].mean()


METRIC_LOSSES = ("triplet", "triplet_query", "circle")


class ReidLoss(nn.Module):
    """ce_weight * smoothed CE(id_logits) + metric_weight * (triplet | triplet_query | circle)(feature)
    + center_weight * center."""

    def __init__(self, num_classes: int, feat_dim: int, metric: str = "triplet", margin: float | None = 0.3,
                 label_smoothing: float = 0.1, ce_weight: float = 1.0, metric_weight: float = 1.0,
                 center_weight: float = 5e-4, circle_margin: float = 0.25, circle_gamma: float = 64.0) -> None:
        super().__init__()
        if metric not in METRIC_LOSSES:
            raise InvalidInputError(f"metric loss must be one of {', '.join(METRIC_LOSSES)}, got {metric!r}")
        self.ce = CrossEntropyLabelSmooth(num_classes, label_smoothing)
        self.metric = {"triplet": lambda: TripletLoss(margin), "triplet_query": lambda: QueryTripletLoss(margin),
                       "circle": lambda: CircleLoss(circle_margin, circle_gamma)}[metric]()
        self.center = CenterLoss(num_classes, feat_dim) if center_weight > 0 else None
        self.ce_weight, self.metric_weight, self.center_weight = ce_weight, metric_weight, center_weight
        # (features, labels) -> those of the global batch: set by distributed training, whose ranks each hold a
        # share of the batch, so the metric loss mines over the whole batch as one process would
        self.gather: Callable | None = None

    def forward(self, out: dict, labels: torch.Tensor) -> tuple:
        """(total loss, {part name: float}) from the model's re-ID training outputs."""
        feats, ids = self.gather(out["reid_feature"], labels) if self.gather else (out["reid_feature"], labels)
        parts = {"ce": self.ce(out["id_logits"], labels), "metric": self.metric(feats, ids)}
        total = self.ce_weight * parts["ce"] + self.metric_weight * parts["metric"]
        if self.center is not None:
            parts["center"] = self.center(out["reid_feature"], labels)
            total = total + self.center_weight * parts["center"]
        return total, {k: float(v.detach()) for k, v in parts.items()}


class GenderLoss(nn.Module):
    """BCE-with-logits on gender_logit (1 = female) + triplet_weight * batch-hard triplet on the gender feature
    standardised over the batch.

    Why standardised: with two broad classes the farthest same-gender crop of almost every anchor is farther
    than its nearest other-gender crop, so a batch-hard triplet on the raw feature costs more than its margin
    for any spread-out features and exactly the margin when every crop maps to the same feature. Training found
    that constant feature (triplet at 0.3, BCE stuck at log 2, every real person called "male"). L2
    normalisation does not help: all crops can share one direction. Standardising each dimension over the batch
    (zero mean, unit variance, then / sqrt(D) so distances are O(1) as on the unit sphere) makes a constant
    feature impossible; the triplet can only lower its loss by ordering the crops by gender, which is what BCE
    needs from the feature too.
    """

    def __init__(self, triplet_weight: float = 1.0, margin: float | None = 0.3, pos_weight: float | None = None) -> None:
        super().__init__()
        self.triplet = TripletLoss(margin)
        self.triplet_weight = triplet_weight
        self.register_buffer("pos_weight", torch.tensor([pos_weight]) if pos_weight else None)
        self.gather: Callable | None = None  # as ReidLoss.gather: standardisation and triplet over the global batch

    @staticmethod
    def standardise(feats: torch.Tensor) -> torch.Tensor:
        """Each dimension to zero mean and unit variance over the batch, scaled by 1 / sqrt(D).

        The variance floor is relative (1e-5 of the mean variance), so scaling every feature changes nothing
        at any scale: an absolute epsilon would let a shrinking feature reach the margin again.
        """
        centred = feats - feats.mean(dim=0, keepdim=True)
        var = centred.pow(2).mean(dim=0, keepdim=True)
        floor = 1e-5 * var.mean().detach() + 1e-20
        return centred / (var + floor).sqrt() / feats.shape[1] ** 0.5

    def forward(self, out: dict, labels: torch.Tensor) -> tuple:
        """(total loss, {part name: float}) from the model's gender training outputs."""
        logit = out["gender_logit"].reshape(-1)
        bce = F.binary_cross_entropy_with_logits(logit, labels.float(), pos_weight=self.pos_weight)
        total = bce
        parts = {"bce": bce}
        feats = out.get("gender_feature")
        if self.gather and self.triplet_weight > 0 and feats is not None:
            feats, labels = self.gather(feats, labels)
        if self.triplet_weight > 0 and feats is not None and len(labels) > 1:
            parts["triplet"] = self.triplet(self.standardise(feats), labels)
            total = total + self.triplet_weight * parts["triplet"]
        return total, {k: float(v.detach()) for k, v in parts.items()}


class AttributeLoss(nn.Module):
    """Positive-ratio weighted BCE over the attribute logits, unknown labels masked out; `weighting` is
    TrainConfig.attribute_weighting.

    A rare attribute (positive ratio p_j small) would be learnt as "always absent" by plain BCE. DeepMAR (Li et
    al., ACPR 2015; `weighting="deepmar"`) weighs its positives by exp(1 - p_j) and its negatives by exp(p_j), at
    most e : 1. `weighting="balanced"` weighs them by 1 / (2 p_j) and 1 / (2 (1 - p_j)) (p_j clamped to
    [0.01, 0.99]), so each attribute's positives and negatives weigh the same in total: the loss of mA, the mean
    of both recalls.
    The loss is the weighted BCE summed over the known entries of the batch divided by their count (so it does
    not grow with the number of attributes); 0 when no entry is known.
    """

    WEIGHTINGS = ("deepmar", "balanced")

    def __init__(self, positive_ratio, weighting: str) -> None:
        super().__init__()
        if weighting not in self.WEIGHTINGS:
            raise InvalidInputError(f"attribute_weighting must be one of {', '.join(self.WEIGHTINGS)}, got "
                                    f"{weighting!r}")
        p = torch.as_tensor(positive_ratio, dtype=torch.float32).reshape(-1)
        if weighting == "deepmar":
            pos, neg = torch.exp(1.0 - p), torch.exp(p)
        else:
            p = p.clamp(0.01, 0.99)
            pos, neg = 0.5 / p, 0.5 / (1.0 - p)
        # recomputed from the data on resume, never stored
        self.register_buffer("positive_weight", pos, persistent=False)
        self.register_buffer("negative_weight", neg, persistent=False)
        # known-label count -> the denominator: set by distributed training, whose ranks hold different counts
        self.denominator: Callable | None = None

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar loss of (N, A) logits against (N, A) labels 1 / 0 / -1 (unknown)."""
        known = labels >= 0
        target = (labels == 1).to(logits.dtype)
        weight = torch.where(labels == 1, self.positive_weight.to(logits.dtype),
                             self.negative_weight.to(logits.dtype)) * known.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        count = known.sum()
        return (weight * bce).sum() / (self.denominator(count) if self.denominator else count.clamp(min=1))
