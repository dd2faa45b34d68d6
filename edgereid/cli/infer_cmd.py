"""`edgereid infer`: embeddings and gender for image files, with any model file."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import runtime_options


@click.command("infer")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-crop embeddings and gender to this JSON file.")
@runtime_options
def infer(model, images, json_out, max_batch, backend, threads) -> None:
    """Run MODEL (.onnx, .engine or .pt) on IMAGES (files or folders of crops)."""
    from edgereid.atomic import write_json_atomic
    from edgereid.imageio import list_images
    from edgereid.runtime import Runtime

    files = []
    for item in images:
        files += list_images(item) if item.is_dir() else [item]
    if not files:
        raise click.UsageError("no image files found in the given paths.")
    with Runtime(model, backend=backend, max_batch=max_batch, threads=threads) as rt:
        out = rt.infer_files(files, progress="infer" if len(files) > rt.max_batch else False)
        for path, prob, label in zip(files, out.gender_prob, out.gender_labels):
            click.echo(f"{path}\t{label}\tP({rt.metadata.gender_positive_class})={prob:.3f}")
        if json_out:
            write_json_atomic(json_out, {
                "model": str(model),
                "backend": rt.backend_name,
                "metadata": rt.metadata.to_dict(),
                "results": out.to_records([str(p) for p in files]),
            })
            click.echo(f"wrote {json_out} ({len(files)} crops)")
