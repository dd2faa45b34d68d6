"""`edgereid import-model`: a foreign single-output re-ID network (.onnx or OpenVINO .xml) as an edgereid model."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("import-model")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The edgereid model to write: NAME.onnx for an ONNX network, NAME.xml (+ .bin) for an IR.")
@click.option("--input", "input_size", required=True, metavar="HxW",
              help="The network's input height x width, e.g. 256x128 (a fixed input size must agree).")
@click.option("--mean", required=True, help="Per-channel mean, three comma-separated values in the network's input "
                                            "channel order (R,G,B for rgb; B,G,R for bgr), e.g. 0.485,0.456,0.406.")
@click.option("--std", required=True, help="Per-channel standard deviation, as --mean (every value > 0).")
@click.option("--units", type=click.Choice(["0-1", "0-255"]), default="0-1", show_default=True,
              help="What --mean/--std are in: 0-1 (a pixel scaled to 0..1, as torchvision's Normalize) or 0-255 "
                   "(raw pixel values, as Caffe and OpenVINO models state them).")
@click.option("--color", type=click.Choice(["rgb", "bgr"], case_sensitive=False), required=True,
              help="Channel order the network was trained on.")
@click.option("--embedding-output", default=None, metavar="NAME",
              help="The output that is the re-ID embedding, when the network has several (the others are dropped).")
@click.option("--normalized", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Whether the embedding is already L2-normalised: auto measures it on generated crops; without "
                   "it edgereid appends the normalisation to the graph.")
@click.option("--interpolation", type=click.Choice(["linear", "area", "cubic", "nearest"]), default="linear",
              show_default=True, help="OpenCV resize the crops get (every stage uses the same).")
def import_model(model, output, input_size, mean, std, units, color, embedding_output, normalized,
                 interpolation) -> None:
    """Write MODEL (a foreign re-ID network: .onnx, or OpenVINO .xml) with edgereid's metadata and an L2-normalised
    `embedding` output, so that calibrate, quantize, parity, build-engine, convert-openvino, bench, the Runtime,
    galleries and trackers take it. There is no gender or attribute head (their outputs read as None)."""
    from edgereid.export.import_model import import_model as run_import

    result = run_import(model, output, input_size, mean, std, color.lower(), units=units,
                        embedding_output=embedding_output, normalized=normalized, interpolation=interpolation)
    meta = result.metadata
    lo, hi = result.row_norms
    l2 = (f"L2 normalisation added (the network's rows had norms {lo:.3g} to {hi:.3g})" if result.normalization_added
          else "its own L2 normalisation kept")
    dropped = f"; dropped outputs {', '.join(result.dropped_outputs)}" if result.dropped_outputs else ""
    batch = "; batch made dynamic" if result.batch_made_dynamic else ""
    click.echo(f"wrote {result.path}: input {meta.input_name!r} 3x{meta.height}x{meta.width} {meta.color_order}, "
               f"embedding {meta.embedding_dim}-d from {result.source_output!r}, {l2}{dropped}{batch}; "
               f"{meta.precision}, from {meta.origin_file} (sha256 {meta.origin_sha256[:12]}...)")
