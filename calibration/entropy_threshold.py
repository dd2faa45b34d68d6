"""TensorRT's entropy (KL) clipping threshold of one activation histogram, as ONNX Runtime computes it, in numpy.

ONNX Runtime's `HistogramCollector.get_entropy_threshold` builds each candidate's reference and quantized
distributions with Python loops and the builtin `sum` over numpy arrays: on a 2048-bin histogram that is about a
second per tensor, most of an INT8 plan's choice of range method. This module builds the same integer
distributions with array operations and hands them to ONNX Runtime's own `smooth_distribution` and `entropy`, so
every candidate's divergence, and the threshold chosen, are ONNX Runtime's to the bit.
"""
from __future__ import annotations

import numpy as np

from edgereid._optional import require


def entropy_threshold(histogram: tuple, num_quantized_bins: int = 128) -> tuple:
    """(low, high) clipping threshold of `histogram` = (counts, edges, min, max, ...) as ONNX Runtime's collector
    stores it: the symmetric window around the middle bin whose `num_quantized_bins`-level quantization keeps
    the KL divergence to the clipped distribution smallest, then clamped to the observed min and max."""
    quant_utils = require("onnxruntime.quantization.quant_utils", "INT8 quantization")
    calibrate = require("onnxruntime.quantization.calibrate", "INT8 quantization")
    hist = np.asarray(histogram[0])
    edges = histogram[1]
    dtype = edges.dtype
    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    cumulative = np.concatenate(([0], np.cumsum(hist)))
    total = cumulative[-1]
    divergences = np.zeros(zero - half + 1)
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        # reference p: the window, with everything outside it piled onto its two end bins
        p = sliced.copy()
        p[0] += cumulative[start]
        p[-1] += total - cumulative[end]
        nonzero = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        whole = num_quantized_bins * merged
        quantized = sliced[:whole].reshape(num_quantized_bins, merged).sum(axis=1)
        quantized[-1] += sliced[whole:].sum()
        # candidate q: each quantized bin spread evenly over its window bins where p is non-zero, truncated to
        # integers (ONNX Runtime assigns into an int64 array); the tail past `whole` stays zero, as there
        norms = nonzero[:whole].reshape(num_quantized_bins, merged).sum(axis=1)
        spread = np.where(norms != 0, quantized / np.maximum(norms, 1), 0.0).astype(np.int64)
        q = np.zeros(p.size, dtype=np.int64)
        q[:whole] = np.repeat(spread, merged)
        p_smooth, q_smooth = quant_utils.smooth_distribution(p), quant_utils.smooth_distribution(q)
        if p_smooth is None or q_smooth is None:
            divergences[i - half] = np.inf
        else:
            divergences[i - half] = np.array(calibrate.entropy(p_smooth, q_smooth), dtype=dtype)
    best = int(np.argmin(divergences)) + half
    low, high = edges[zero - best], edges[min(zero + best + 1, num_bins)]
    low = histogram[2] if low < histogram[2] else low
    high = histogram[3] if high > histogram[3] else high
    return np.array(low, dtype=dtype), np.array(high, dtype=dtype)
