"""DukeMTMC-reID reader: Market-1501 folder names and naming (`0005_c2_f0046985.jpg`), 8 cameras."""
from __future__ import annotations

from edgereid.datasets._market_like import load_market_like
from edgereid.datasets.records import ReidSplits

CANDIDATES = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc")
NUM_CAMERAS = 8


def load_dukemtmc(root) -> ReidSplits:
    """Load DukeMTMC-reID (702 train ids, 1110 gallery ids incl. 408 distractor ids); train relabelled."""
    return load_market_like(root, "DukeMTMC-reID", CANDIDATES, NUM_CAMERAS)
