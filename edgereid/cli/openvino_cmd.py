"""`edgereid convert-openvino`: an edgereid ONNX file -> OpenVINO IR (.xml + .bin) with its metadata inside."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("convert-openvino")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="IR file NAME.xml (NAME.bin is written beside it). Default: MODEL with .xml.")
@click.option("--compress-to-fp16", is_flag=True,
              help="Store float weights as fp16 (half the .bin; the metadata then says fp16). Default: as the ONNX "
                   "file stores them.")
def convert_openvino(model, out, compress_to_fp16) -> None:
    """Convert MODEL.onnx (fp32, fp16 or INT8 Q/DQ) to OpenVINO IR for `Runtime("model.xml")`."""
    from edgereid.backends.openvino_backend import OpenVINOBackend
    from edgereid.backends.openvino_convert import convert_to_openvino, ir_paths

    xml = convert_to_openvino(model, out, compress_to_fp16=compress_to_fp16)
    with OpenVINOBackend(xml) as backend:  # reads it back: the IR loads and carries the metadata
        meta = backend.metadata
        size = sum(p.stat().st_size for p in ir_paths(xml)) / 2**20
        click.echo(f"wrote {xml} + {xml.with_suffix('.bin').name} ({size:.1f} MiB, precision {meta.precision}, "
                   f"outputs {', '.join(meta.output_names)}; CPU inference precision {backend.inference_precision})")
