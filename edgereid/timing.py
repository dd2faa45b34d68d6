"""Latency statistics, peak-memory readings and device-clock readings for benchmarks (numpy + stdlib only)."""
from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from glob import glob
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
def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def jetson_info() -> dict | None:
    """Power mode (nvpmodel -q) and current CPU/GPU/EMC clocks on a Jetson; None on other machines.

    Clocks explain most of the run-to-run spread on Jetson: record them with every result.
    """
    model = _read("/proc/device-tree/model")
    if not (model and "jetson" in model.lower()) and not os.path.exists("/etc/nv_tegra_release"):
        return None
    info: dict = {"model": (model or "").rstrip("\x00"), "l4t": _read("/etc/nv_tegra_release")}
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
        info["nvpmodel"] = out.stdout.strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        info["nvpmodel"] = None
    clocks = {}
    for path in sorted(glob("/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq")):
        clocks[path.split("/")[5] + "_khz"] = _read(path)
    # GPU and memory controller devfreq nodes differ between Jetson generations; take whatever exists.
    nodes = sorted(glob("/sys/class/devfreq/*/cur_freq")) + glob("/sys/kernel/debug/bpmp/debug/clk/emc/rate")
    for path in nodes:
        clocks[path] = _read(path)
    info["clocks"] = clocks
    return info


def host_info() -> dict:
    """A short host description for CLI results (benchmarks/machine.py gives the full one)."""
    import platform

    cpu = platform.processor() or "unknown"
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    libs = {}
    for name in ("numpy", "cv2", "onnxruntime", "tensorrt"):
        mod = sys.modules.get(name)
        if mod is not None:
            libs[name] = getattr(mod, "__version__", "unknown")
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "libraries": libs, "jetson": jetson_info()}
