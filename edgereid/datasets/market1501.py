"""Market-1501 reader: `bounding_box_train`, `query`, `bounding_box_test` (+ optional `gt_bbox`), 6 cameras."""
from __future__ import annotations

from edgereid.datasets._market_like import load_market_like
from edgereid.datasets.records import ReidSplits

CANDIDATES = ("Market-1501-v15.09.15", "Market-1501", "market1501")
NUM_CAMERAS = 6


def load_market1501(root, use_gt_bbox: bool = False) -> ReidSplits:
    """Load Market-1501: junk (-1) dropped everywhere, distractors (0) only in the gallery, train relabelled.

    `use_gt_bbox` also reads the hand-drawn `gt_bbox` boxes into `ReidSplits.extra` (not used for the
    benchmark protocol).
    """
    return load_market_like(root, "Market-1501", CANDIDATES, NUM_CAMERAS, use_gt_bbox)
