"""The x86 features that decide how ONNX Runtime's INT8 kernels compute on this CPU (VNNI, AMX, AVX2).

Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of
products into a saturating 16-bit sum (255 x 127 x 2 = 64,770 is clamped to 32,767); VNNI (AVX-512 VNNI,
AVX-VNNI) and AMX accumulate in 32 bits. So the same INT8 file computes different numbers on different x86 CPUs.

Features are read as this process sees them (CPUID, through numpy's dispatcher) where numpy knows the feature,
and from /proc/cpuinfo for the two it does not (AVX-VNNI, AMX). The CPUID view is the one ONNX Runtime's
dispatcher acts on; it differs from /proc/cpuinfo under an emulator or a hypervisor that masks features.
"""
from __future__ import annotations

import functools
import platform


def proc_flags() -> set:
    """The CPU flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpuid_view() -> dict | None:
    """numpy's runtime CPU detection ({'AVX2': True, ...}), or None where this numpy does not expose it."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return dict(__cpu_features__)


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict:
    """{"x86": bool, "avx2", "avx512_vnni", "avx_vnni", "amx_int8": bool} for this process."""
    machine = platform.machine().lower()
    x86 = machine in ("x86_64", "amd64", "i386", "i686", "x86")
    flags = proc_flags()
    cpuid = _cpuid_view()
    if cpuid is None or not any(cpuid.get(k) is not None for k in ("AVX2", "AVX512VNNI")):
        avx2, avx512_vnni = "avx2" in flags, "avx512_vnni" in flags
    else:
        avx2, avx512_vnni = bool(cpuid.get("AVX2")), bool(cpuid.get("AVX512VNNI"))
    # numpy does not report AVX-VNNI or AMX; /proc/cpuinfo does, and neither exists on a CPU without AVX2
    # (AMX parts all have AVX-512 VNNI), which keeps an emulated CPU that hides those consistent.
    avx_vnni = avx2 and "avx_vnni" in flags
    amx_int8 = avx512_vnni and "amx_int8" in flags
    return {"x86": x86, "avx2": x86 and avx2, "avx512_vnni": x86 and avx512_vnni, "avx_vnni": x86 and avx_vnni,
            "amx_int8": x86 and amx_int8}


def has_vnni(features: dict | None = None) -> bool:
    """True when the CPU has a 32-bit-accumulating int8 dot product (AVX-512 VNNI, AVX-VNNI or AMX)."""
    f = features or cpu_features()
    return bool(f["avx512_vnni"] or f["avx_vnni"] or f["amx_int8"])


def int8_saturates(features: dict | None = None) -> bool:
    """True when ONNX Runtime's fast u8 x s8 kernels saturate here: an x86 CPU without VNNI or AMX."""
    f = features or cpu_features()
    return bool(f["x86"] and not has_vnni(f))


def describe_cpu_features(features: dict | None = None) -> str:
    """One line, e.g. 'AVX2 yes, AVX-512 VNNI no, AVX-VNNI no, AMX no: INT8 u8s8 kernels saturate'."""
    f = features or cpu_features()
    if not f["x86"]:
        return f"{platform.machine()} (not x86): INT8 kernels do not saturate"
    yes = {True: "yes", False: "no"}
    verdict = "INT8 u8s8 kernels saturate" if int8_saturates(f) else "INT8 accumulates in 32 bits (VNNI)"
    return (f"AVX2 {yes[f['avx2']]}, AVX-512 VNNI {yes[f['avx512_vnni']]}, AVX-VNNI {yes[f['avx_vnni']]}, "
            f"AMX {yes[f['amx_int8']]}: {verdict}")
