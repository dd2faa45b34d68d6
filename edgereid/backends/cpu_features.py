"""The x86 features that decide how ONNX Runtime's INT8 kernels compute on this CPU (VNNI, AMX, AVX2).

Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, which adds each pair of
products into a saturating 16-bit sum (255 x 127 x 2 = 64,770 is clamped to 32,767); VNNI (AVX-512 VNNI,
AVX-VNNI) and AMX accumulate in 32 bits. So the same INT8 file computes different numbers on different x86 CPUs.

Features are read as this process sees them: CPUID, the view ONNX Runtime's dispatcher acts on (numpy's
dispatcher for AVX2 / AVX-512 VNNI, a 30-byte CPUID routine for AVX-VNNI and AMX, which numpy does not report).
/proc/cpuinfo is only the fallback: it describes the host, not an emulated CPU (qemu-user passes the host's
file through: on a host with AVX-VNNI, qemu's Zen 1 read "AVX-VNNI yes" there) or a hypervisor that masks
features.
"""
from __future__ import annotations

import ctypes
import functools
import mmap
import platform
import sys

from edgereid.errors import InvalidInputError

# How a backend computes INT8 on a CPU whose u8 x i8 kernels saturate: "exact" (the default) avoids the
# saturation at some speed, "fast" keeps the saturating kernels and warns. One choice for every CPU backend.
INT8_KERNELS = ("exact", "fast")

# cpuid(leaf, subleaf, uint32 out[4]) for the System V x86-64 ABI (Linux, macOS): rbx is callee-saved, rdx is
# the out pointer and CPUID overwrites it, so it is moved to r8 first.
_CPUID_CODE = bytes([
    0x53,                    # push rbx
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8+12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])


def cpuid(leaf: int, subleaf: int = 0) -> tuple | None:
    """(eax, ebx, ecx, edx) of CPUID(leaf, subleaf) as this process sees it; None off x86-64 System V or where
    executable memory is refused (a hardened kernel), so callers fall back to /proc/cpuinfo."""
    if platform.machine().lower() not in ("x86_64", "amd64") or sys.platform == "win32":
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, ValueError, AttributeError):
        return None
    try:
        page.write(_CPUID_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
        fn = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(addr)
        out = (ctypes.c_uint32 * 4)()
        fn(leaf, subleaf, out)
        result = tuple(int(v) for v in out)
        del fn, addr
        return result
    finally:
        try:
            page.close()
        except BufferError:  # a ctypes view still holds the page: leave it to the garbage collector
            pass


@functools.lru_cache(maxsize=1)
def cpuid_int8_features() -> dict | None:
    """{"avx_vnni": bool, "amx_int8": bool} from CPUID, or None where CPUID cannot be read from Python."""
    top = cpuid(0)
    if top is None:
        return None
    if top[0] < 7:
        return {"avx_vnni": False, "amx_int8": False}
    leaf7 = cpuid(7, 0)
    # leaf 7 subleaf 1 exists when leaf 7 subleaf 0 reports max subleaf >= 1 (in eax)
    leaf7_1 = cpuid(7, 1) if leaf7[0] >= 1 else (0, 0, 0, 0)
    return {"avx_vnni": bool(leaf7_1[0] >> 4 & 1), "amx_int8": bool(leaf7[3] >> 25 & 1)}


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
    # numpy does not report AVX-VNNI or AMX: CPUID does, else /proc/cpuinfo (the host's). Neither exists on a
    # CPU without AVX2 (AMX parts all have AVX-512 VNNI), which keeps the fallback consistent under emulation.
    direct = cpuid_int8_features() if x86 else None
    if direct is not None:
        # AMX also needs the kernel's support (tile state): Linux lists amx_int8 only where it enables it
        avx_vnni = avx2 and direct["avx_vnni"]
        amx_int8 = avx512_vnni and direct["amx_int8"] and ("amx_int8" in flags or not flags)
    else:
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


def onednn_miscomputes(output_width: int | None, column_stride: int, kernel_width: int) -> bool:
    """True for the one convolution shape oneDNN's AMX INT8 and bfloat16 kernels (and its AVX512-BF16 ones)
    miscompute: an output one column wide from a convolution that strides across columns with a kernel wider
    than one. `output_width` None asks whether the convolution can have that shape at some input width. Both
    OpenVINO's INT8 placement (backends/openvino_int8.py) and bfloat16 training (training/bf16.py) keep such
    convolutions in float32."""
    return column_stride > 1 and kernel_width > 1 and output_width in (None, 1)


def check_int8_kernels(int8_kernels: str) -> None:
    """Raise InvalidInputError for an `int8_kernels` value other than "exact" or "fast"."""
    if int8_kernels not in INT8_KERNELS:
        raise InvalidInputError(f"int8_kernels={int8_kernels!r} is not known; use one of {', '.join(INT8_KERNELS)}.")


def describe_cpu_features(features: dict | None = None) -> str:
    """One line, e.g. 'AVX2 yes, AVX-512 VNNI no, AVX-VNNI no, AMX no: INT8 u8s8 kernels saturate'."""
    f = features or cpu_features()
    if not f["x86"]:
        return f"{platform.machine()} (not x86): INT8 kernels do not saturate"
    yes = {True: "yes", False: "no"}
    verdict = "INT8 u8s8 kernels saturate" if int8_saturates(f) else "INT8 accumulates in 32 bits (VNNI)"
    return (f"AVX2 {yes[f['avx2']]}, AVX-512 VNNI {yes[f['avx512_vnni']]}, AVX-VNNI {yes[f['avx_vnni']]}, "
            f"AMX {yes[f['amx_int8']]}: {verdict}")
