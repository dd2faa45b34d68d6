"""Each loss against a hand-computed value or a slow per-element reference written from its definition."""
import math

import numpy as np

import pytest

torch = pytest.importorskip("torch")

from edgereid.training.losses import (  # noqa: E402
    CenterLoss,
    CircleLoss,
    CrossEntropyLabelSmooth,
    GenderLoss,
    QueryTripletLoss,
    ReidLoss,
    TripletLoss,
    instance_positions,
)


def test_label_smoothing_by_hand():
    # Two classes, logits (0, 0): p = (1/2, 1/2); with eps = 0.2 the target is (0.9, 0.1) -> loss = log 2.
    loss = CrossEntropyLabelSmooth(2, epsilon=0.2)(torch.zeros(1, 2), torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    # Three classes, logits (log 1, log 2, log 1): p = (1/4, 1/2, 1/4); target class 1, eps = 0.3:
    # q = (0.1, 0.8, 0.1) -> -(0.1 log 1/4 + 0.8 log 1/2 + 0.1 log 1/4) = 0.2 log 4 + 0.8 log 2 = 1.2 log 2.
    logits = torch.tensor([[0.0, math.log(2), 0.0]])
    loss = CrossEntropyLabelSmooth(3, epsilon=0.3)(logits, torch.tensor([1]))
    assert loss.item() == pytest.approx(1.2 * math.log(2), abs=1e-6)


def test_label_smoothing_zero_eps_is_plain_ce():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(5, 4, generator=g), torch.tensor([0, 3, 1, 1, 2])
    assert CrossEntropyLabelSmooth(4, 0.0)(logits, y).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, y).item(), abs=1e-6)


def test_triplet_hardest_positive_negative_by_hand():
    # 1-D points: class 0 at 0 and 1, class 1 at 3 and 7.
    # anchor 0: hardest pos 1 (d=1), hardest neg 3 (d=3) -> relu(1-3+0.5) = 0
    # anchor 1: pos d=1, neg d=2 -> relu(1-2+0.5) = 0
    # anchor 3: pos d=4, nearest neg is 1 (d=2) -> relu(4-2+0.5) = 2.5
    # anchor 7: pos d=4, neg d=6 -> 0           mean = 2.5 / 4
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    y = torch.tensor([0, 0, 1, 1])
    assert TripletLoss(margin=0.5)(x, y).item() == pytest.approx(2.5 / 4, abs=1e-5)
    soft = sum(math.log1p(math.exp(a - n)) for a, n in [(1, 3), (1, 2), (4, 2), (4, 6)]) / 4
    assert TripletLoss(margin=None)(x, y).item() == pytest.approx(soft, abs=1e-5)


def _triplet_loop(x, y, margin):
    losses = []
    for i in range(len(y)):
        pos = [torch.dist(x[i], x[j]).item() for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [torch.dist(x[i], x[j]).item() for j in range(len(y)) if y[j] != y[i]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses)


def test_triplet_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 6, generator=g), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert TripletLoss(0.3)(x, y).item() == pytest.approx(_triplet_loop(x, y, 0.3), abs=1e-5)


def test_instance_positions_count_each_identity_in_batch_order():
    assert instance_positions(torch.tensor([5, 5, 2, 5, 2, 9])).tolist() == [0, 1, 0, 2, 1, 0]


def _query_triplet_loop(x, y, margin):
    """Position by position: the k-th instance of each identity is a query, every k-th instance leaves."""
    position = [sum(y[j] == y[i] for j in range(i)) for i in range(len(y))]
    losses = []
    for k in range(max(position) + 1):
        gallery = [j for j in range(len(y)) if position[j] != k]
        for i in (i for i in range(len(y)) if position[i] == k):
            pos = [torch.dist(x[i], x[j]).item() for j in gallery if y[j] == y[i]]
            neg = [torch.dist(x[i], x[j]).item() for j in gallery if y[j] != y[i]]
            if pos and neg:
                losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses)


def test_query_triplet_by_hand():
    # 1-D, P2 x K2 in batch order: class 0 at 0 (pos 0) and 3 (pos 1), class 1 at 0.5 (pos 0) and 10 (pos 1).
    # Round 0 (queries 0 and 0.5; gallery 3 and 10): query 0: pos 3, neg 10 -> relu(3 - 10 + 0.5) = 0;
    # query 0.5: pos 10 (d 9.5), neg 3 (d 2.5) -> 7.5.  Round 1 (queries 3 and 10; gallery 0 and 0.5):
    # query 3: pos 0 (d 3), neg 0.5 (d 2.5) -> 1.0; query 10: pos 0.5 (d 9.5), neg 0 (d 10) -> 0.  Mean 8.5 / 4.
    # Batch-hard takes 0.5 as the nearest negative of 0 (a query of the same round): 3 + 1 + 9.5 + 3 = 16.5 / 4.
    x, y = torch.tensor([[0.0], [3.0], [0.5], [10.0]]), torch.tensor([0, 0, 1, 1])
    assert QueryTripletLoss(0.5)(x, y).item() == pytest.approx(8.5 / 4, abs=1e-5)
    assert TripletLoss(0.5)(x, y).item() == pytest.approx(16.5 / 4, abs=1e-5)


def test_query_triplet_matches_loop_reference_in_any_batch_order():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 5, generator=g)
    y = torch.tensor([3, 1, 3, 0, 1, 2, 0, 3, 2, 1, 0, 2, 3, 1, 2, 0])  # P4 x K4, shuffled
    assert QueryTripletLoss(0.3)(x, y).item() == pytest.approx(_query_triplet_loop(x, y, 0.3), abs=1e-5)
    crit = ReidLoss(4, 5, metric="triplet_query", center_weight=0.0)
    _, parts = crit({"id_logits": torch.randn(16, 4, generator=g), "reid_feature": x}, y)
    assert parts["metric"] == pytest.approx(_query_triplet_loop(x, y, 0.3), abs=1e-5)


def test_center_loss_by_hand():
    loss = CenterLoss(2, 2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    x = torch.tensor([[3.0, 4.0], [1.0, 2.0]])  # squared distances 25 and 1 -> mean 13
    assert loss(x, torch.tensor([0, 1])).item() == pytest.approx(13.0)
    # The gradient moves the centres toward their features.
    loss(x, torch.tensor([0, 1])).backward()
    assert (loss.centers.grad[0] < 0).all()


def _circle_loop(x, y, m, gamma):
    x = torch.nn.functional.normalize(x, dim=1)
    out = []
    for i in range(len(y)):
        sp = [float(x[i] @ x[j]) for j in range(len(y)) if j != i and y[j] == y[i]]
        sn = [float(x[i] @ x[j]) for j in range(len(y)) if y[j] != y[i]]
        if not sp or not sn:
            continue
        lp = [-gamma * max(0.0, 1 + m - s) * (s - (1 - m)) for s in sp]
        ln = [gamma * max(0.0, s + m) * (s - m) for s in sn]
        lse = lambda v: math.log(sum(math.exp(t) for t in v))  # noqa: E731
        z = lse(ln) + lse(lp)
        out.append(math.log1p(math.exp(z)))
    return sum(out) / len(out)


def test_circle_loss_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 5, generator=g), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert CircleLoss(0.25, 16.0)(x, y).item() == pytest.approx(_circle_loop(x, y, 0.25, 16.0), rel=1e-5)


def test_circle_loss_is_small_when_classes_separate():
    # Identical features within a class, orthogonal across classes: s_p = 1, s_n = 0 -> near-zero loss.
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1])
    sep = CircleLoss(0.25, 64.0)(x, y).item()
    mixed = CircleLoss(0.25, 64.0)(x, torch.tensor([0, 1, 0, 1])).item()
    assert sep < 1e-3 < mixed


def test_reid_loss_combines_parts():
    g = torch.Generator().manual_seed(3)
    out = {"id_logits": torch.randn(6, 3, generator=g), "reid_feature": torch.randn(6, 4, generator=g)}
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    crit = ReidLoss(3, 4, center_weight=0.01, label_smoothing=0.1)
    total, parts = crit(out, y)
    assert total.item() == pytest.approx(parts["ce"] + parts["metric"] + 0.01 * parts["center"], rel=1e-5)
    assert parts["metric"] == pytest.approx(_triplet_loop(out["reid_feature"], y, 0.3), abs=1e-5)


def test_gender_loss_bce_plus_triplet():
    out = {"gender_logit": torch.tensor([[0.0], [2.0]]), "gender_feature": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    total, parts = GenderLoss(triplet_weight=0.0)(out, torch.tensor([1, 0]))
    # BCE: -log(0.5) for the first, -log(1 - sigmoid(2)) = log(1 + e^2) for the second.
    assert total.item() == pytest.approx((math.log(2) + math.log1p(math.exp(2))) / 2, abs=1e-6)
    assert set(parts) == {"bce"}


def test_gender_triplet_sees_the_batch_standardised_feature():
    g = torch.Generator().manual_seed(0)
    feats = 3.0 + 2.0 * torch.rand(12, 8, generator=g)  # post-ReLU-like: positive, offset
    labels = torch.tensor([0, 1] * 6)
    out = {"gender_logit": torch.zeros(12, 1), "gender_feature": feats}
    _, parts = GenderLoss(triplet_weight=1.0, margin=0.3)(out, labels)
    # by hand: zero mean, unit (biased) variance per dimension (floor: 1e-5 of the mean variance), then / sqrt(D)
    x = feats.numpy().astype(np.float64)
    z = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5 * x.var(0).mean()) / np.sqrt(x.shape[1])
    assert parts["triplet"] == pytest.approx(_triplet_loop(torch.tensor(z), labels, 0.3), abs=1e-4)
    # Shrinking or shifting every feature changes nothing: no constant-feature shortcut to the margin.
    for f in (feats * 1e-4, feats * 50.0, feats + 100.0):
        _, again = GenderLoss(triplet_weight=1.0, margin=0.3)({**out, "gender_feature": f}, labels)
        assert again["triplet"] == pytest.approx(parts["triplet"], abs=1e-3)
    # ... whereas the raw-feature triplet falls to exactly its margin as the features shrink to one point
    assert TripletLoss(0.3)(feats * 1e-6, labels).item() == pytest.approx(0.3, abs=1e-4)
    assert TripletLoss(0.3)(feats, labels).item() > 0.3


def test_camera_aware_triplet_takes_negatives_from_the_anchors_own_camera():
    """Anchor 0 (camera 0): its nearest negative overall is in camera 1 and is ignored with cameras given."""
    from edgereid.training.losses import TripletLoss

    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.2, 0.0], [5.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 2])
    cams = torch.tensor([0, 0, 1, 0])
    loss = TripletLoss(margin=1.0)
    # anchor 0: d_ap 0.1; nearest negative 0.2 (camera 1) vs 5.0 (own camera)
    plain, aware = loss(feats, labels), loss(feats, labels, cams)
    assert plain > 0.5 and aware < plain
    # anchors 2 and 3 have no positive and are skipped; anchor 1: d_ap 0.1, own-camera negative 4.9
    assert aware == pytest.approx(0.0)
