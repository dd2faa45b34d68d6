"""Describe the machine a result was measured on (CPU, cores, memory, GPU, Jetson clocks, library versions)."""
from __future__ import annotations

import os
import platform
import subprocess
from glob import glob
from importlib import metadata
from datetime import datetime, timezone

from edgereid.backends.cpu_features import cpu_features, describe_cpu_features, proc_flags


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list:
    return sorted(proc_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "fma"})


def _version(distribution: str) -> str | None:
    # Read installed versions from package metadata: importing torch or tensorrt just to ask would make
    # `edgereid bench` heavy (and the runtime must not load them).
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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


def describe_machine() -> dict:
    """CPU, cores, memory, GPU and library versions, as a JSON-ready dict."""
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    libs = {"numpy": "numpy", "cv2": "opencv-python-headless", "onnxruntime": "onnxruntime", "onnx": "onnx",
            "torch": "torch", "tensorrt": "tensorrt", "faiss": "faiss-cpu", "edgereid": "edgereid"}
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        # as this process sees them (CPUID): what ONNX Runtime's INT8 kernels were chosen by
        "cpu_features": cpu_features(),
        "int8_kernels": describe_cpu_features(),
        "logical_cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": _gpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": {name: _version(dist) for name, dist in libs.items()},
        "jetson": jetson_info(),
    }


def machine_line() -> str:
    """One line for a terminal: CPU model, cores and the INT8-relevant features this process sees."""
    return f"{_cpu_model()}, {os.cpu_count()} logical cores; {describe_cpu_features()}"
