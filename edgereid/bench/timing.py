"""Latency statistics, peak-memory readings and device-clock readings for benchmarks (numpy + stdlib only)."""
from __future__ import annotations

import math
import resource
import sys
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    values = sorted(float(s) for s in samples)
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    pos = (len(values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


@dataclass
class LatencyStats:
    """Summary of per-call latencies, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> "LatencyStats":
        """Summarise latencies given in seconds."""
        if len(samples) == 0:
            raise ValueError("no latency samples to summarise")
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        return cls(count=int(ms.size), mean_ms=float(ms.mean()), std_ms=float(ms.std()), min_ms=float(ms.min()),
                   p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90), p99_ms=percentile(ms, 99),
                   max_ms=float(ms.max()))

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return asdict(self)


# -- memory ------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux /proc), or None where it cannot be read."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else None


def peak_rss_bytes() -> int:
    """RSS high-water mark: /proc VmHWM (resettable) on Linux, else getrusage's process-lifetime maximum."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux but bytes on macOS.
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


def reset_peak_rss() -> bool:
    """Reset the high-water mark so the next reading covers only what follows (Linux >= 4.0); False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- device clocks -----------------------------------------------------------------------------------------
