"""onnx-simplifier with a guard: keep the simplified graph only if its outputs still match."""
from __future__ import annotations

import logging
import warnings

import numpy as np

from edgereid._optional import require

log = logging.getLogger(__name__)


def _run(proto, feed: dict) -> list:
    ort = require("onnxruntime")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def simplify_checked(proto, feed: dict, atol: float = 1e-4):
    """Simplify `proto` with onnxsim and return it if its outputs match the original on `feed`, else the original
    object itself (so `result is proto` tells a caller that no simplification was kept)."""
    try:
        onnxsim = require("onnxsim", "simplifying exported ONNX graphs")
    except ImportError:
        warnings.warn("onnxsim is not installed; exporting the unsimplified graph (pip install 'edgereid[export]').")
        return proto
    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        warnings.warn("onnx-simplifier could not validate its result; keeping the unsimplified graph.")
        return proto
    before, after = _run(proto, feed), _run(simplified, feed)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(before, after))
    if worst > atol:
        warnings.warn(f"simplified graph differs by {worst:.2e} (> {atol}); keeping the unsimplified graph.")
        return proto
    log.info("simplified: %d -> %d nodes (max output change %.1e)", len(proto.graph.node),
             len(simplified.graph.node), worst)
    return simplified
