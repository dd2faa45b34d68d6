"""`edgereid build-engine`: a TensorRT engine (+ JSON sidecar) from an edgereid ONNX file, on a GPU machine."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("build-engine")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Engine file to write (a <output>.json sidecar is written next to it).")
@click.option("--fp16", is_flag=True, help="TensorRT < 11, fp32 file: allow fp16 kernels.")
@click.option("--int8", is_flag=True, help="TensorRT < 11, fp32 file: implicit INT8 with the entropy calibrator.")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration set (with --int8).")
@click.option("--calib-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration cache file (default: the output path with suffix .calib.cache); reused when present.")
@click.option("--min-batch", type=int, default=1, show_default=True)
@click.option("--opt-batch", type=int, default=8, show_default=True)
@click.option("--max-batch", type=int, default=32, show_default=True)
@click.option("--workspace", type=float, default=2.0, show_default=True, help="Builder workspace in GiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Timing cache file, read when present and updated after the build.")
@click.option("--dla-core", type=int, default=None, help="Jetson: build for this DLA core (GPU fallback on).")
@click.option("--device", type=int, default=0, show_default=True, help="CUDA device index.")
def build_engine(model, output, fp16, int8, calib, calib_cache, min_batch, opt_batch, max_batch, workspace,
                 timing_cache, dla_core, device) -> None:
    """Build a TensorRT engine from MODEL (.onnx fp32 / fp16 / int8 Q/DQ) for TensorRT 8.6, 10.x or 11.x."""
    from edgereid.export.trt_build import build_engine as build

    calib_set = None
    if calib is not None:
        from edgereid.datasets.calibration_set import CalibrationSet

        calib_set = CalibrationSet.load(calib)
    path = build(model, output, fp16=fp16, int8=int8, calib=calib_set, min_batch=min_batch, opt_batch=opt_batch,
                 max_batch=max_batch, workspace_gib=workspace, timing_cache=timing_cache, dla_core=dla_core,
                 calibration_cache=calib_cache, device=device)
    click.echo(f"wrote {path} and {path.name}.json (batch {min_batch}/{opt_batch}/{max_batch})")
