"""`edgereid quantize`: FP16 or INT8 (Q/DQ) ONNX from an fp32 edgereid ONNX file."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("quantize")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fp16", "precision", flag_value="fp16", help="FP16 weights/activations (InstanceNorm kept fp32).")
@click.option("--int8", "precision", flag_value="int8", help="INT8 Q/DQ from a calibration set (--calib).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration set from `edgereid calibrate` (INT8).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="INT8 activation ranges: min-max, entropy (TensorRT's KL histogram), "
                                      "or a percentile of |x|.")
@click.option("--percentile", type=float, default=99.999, show_default=True, help="With --method percentile.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="INT8 activations: symmetric int8 (TensorRT) or uint8 (fastest in ONNX Runtime on x86).")
@click.option("--reduce-range", is_flag=True,
              help="7-bit INT8 weights: never saturates ONNX Runtime's fast kernels on x86 CPUs without VNNI, "
                   "at some accuracy on every CPU.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def quantize(model, precision, calib, method, percentile, target, reduce_range, output) -> None:
    """Write an FP16 or INT8 version of MODEL (an fp32 .onnx from `edgereid export`)."""
    if precision is None:
        raise click.UsageError("choose --fp16 or --int8.")
    if precision == "fp16":
        from edgereid.calibration.fp16 import quantize_fp16

        path = quantize_fp16(model, output)
    else:
        if calib is None:
            raise click.UsageError("--int8 needs --calib DIR (build one with `edgereid calibrate`).")
        from edgereid.calibration.int8 import quantize_int8

        path = quantize_int8(model, calib, output, method=method, percentile=percentile, target=target,
                             reduce_range=reduce_range)
    click.echo(f"wrote {path} ({precision}, {path.stat().st_size / 2**20:.1f} MiB)")
