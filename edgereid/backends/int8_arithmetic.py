"""How a CPU backend computes an INT8 file, decided in one function for every caller.

Four facts decide it: whether TensorRT's arithmetic is emulated (checking a TensorRT-form file on a CPU), whether
this CPU's fast u8 x s8 kernels saturate (no VNNI, or OpenVINO capped below VNNI), the file's weight bits (7-bit
weights cannot saturate) and the caller's `int8_kernels` ("exact" avoids saturation at some speed, "fast" keeps
the saturating kernels). ONNX Runtime, OpenVINO, the sensitivity pass, bias correction and parity all ask
`choose_int8_arithmetic` instead of combining the facts themselves, so a file computes the same way wherever it
is checked.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgereid.backends.cpu_features import check_int8_kernels, int8_saturates
from edgereid.errors import InvalidInputError

EMULATIONS = ("tensorrt",)
# What runs, one word each: "emulated" (float Conv on dequantized int8), "native" (the CPU's INT8 kernels, which
# do not saturate here), "seven_bit" (7-bit weights: the fast kernels cannot saturate), "exact" (saturation
# avoided: ONNX Runtime's U8U8 kernels, OpenVINO's f32 convs), "fast" (saturating kernels, by request).
KINDS = ("emulated", "native", "seven_bit", "exact", "fast")


@dataclass(frozen=True)
class Int8Arithmetic:
    """The decision: `kind` (one of KINDS) and the facts it came from."""

    kind: str
    emulate: str | None
    int8_kernels: str
    saturates: bool

    @property
    def avoid_saturation(self) -> bool:
        """True when the caller asked for exact INT8 on kernels that saturate here (not emulated): ONNX Runtime
        switches kernels unless the weights are 7-bit, OpenVINO moves the convs that could saturate to f32."""
        return self.saturates and self.int8_kernels == "exact" and self.emulate is None


def check_emulate(emulate: str | None) -> None:
    """Raise InvalidInputError for an `emulate` other than None or "tensorrt"."""
    if emulate is not None and emulate not in EMULATIONS:
        raise InvalidInputError(f"emulate={emulate!r} is not known; use emulate='tensorrt' (check a TensorRT-form "
                                f"INT8 file on a CPU) or leave it unset.")


def choose_int8_arithmetic(emulate: str | None = None, int8_kernels: str = "exact", saturates: bool | None = None,
                           weight_bits: int = 8) -> Int8Arithmetic:
    """The one INT8 arithmetic decision (see the module docstring); `saturates` defaults to this CPU's answer."""
    check_emulate(emulate)
    check_int8_kernels(int8_kernels)
    saturates = int8_saturates() if saturates is None else bool(saturates)
    if emulate == "tensorrt":
        kind = "emulated"
    elif not saturates:
        kind = "native"
    elif weight_bits == 7:
        kind = "seven_bit"  # every u8 x s7 pair sum fits 16 bits: the fast kernels are exact
    elif int8_kernels == "exact":
        kind = "exact"
    else:
        kind = "fast"
    return Int8Arithmetic(kind, emulate, int8_kernels, saturates)

