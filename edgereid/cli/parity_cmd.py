"""`edgereid parity`: a checkpoint (or an fp32 model file) vs its ONNX/engine files on an evaluation set; exits 1
when a check fails."""
from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("parity")
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Market-1501-layout evaluation folder (query/, bounding_box_test/).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration set whose images are excluded from the evaluation.")
@click.option("--max-query", type=int, default=0, help="Evaluate an even subsample of at most N queries.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report here.")
@click.option("--threads", type=int, default=None)
@click.option("--emulate-tensorrt/--cpu-kernels", default=True, show_default=True,
              help="TensorRT-form INT8 .onnx files: compute as TensorRT does (the same on every CPU), or with "
                   "ONNX Runtime's INT8 kernels of this CPU.")
@click.option("--attributes-data", type=click.Path(exists=True, path_type=Path),
              help="Crops labelled with the model's attributes (a PETA folder or an attribute CSV): adds the "
                   "attribute mA check (within 0.01 of the reference's) for a model with an attribute head.")
def parity(reference, models, data, calib, max_query, json_path, threads, emulate_tensorrt,
           attributes_data) -> None:
    """Compare MODELS (.onnx fp32/fp16/int8, .engine, .xml) with REFERENCE: the .pt checkpoint, or any model file,
    such as the fp32 .onnx of a network brought in by `edgereid import-model` (no checkpoint needed)."""
    from edgereid.calibration.parity import run_parity

    report = run_parity(reference, models, data, calib=calib, max_query=max_query, threads=threads,
                        emulate_tensorrt=emulate_tensorrt, attributes_data=attributes_data)
    click.echo(report.table())
    if json_path:
        report.save(json_path)
        click.echo(f"wrote {json_path}")
    if not report.passed:
        sys.exit(1)
