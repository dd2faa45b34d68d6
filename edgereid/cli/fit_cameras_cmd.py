"""`edgereid fit-cameras`: each camera's mean embedding on a site's crops, for `edgereid.CameraCentring`."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import runtime_options


@click.command("fit-cameras")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the site's person crops (searched recursively; no labels), each name carrying its "
                   "camera (0001_c2s1_..., cam2_..., <id>_<camera>_...).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The camera centring file to write (JSON).")
@click.option("--min-crops", type=int, default=10, show_default=True,
              help="Refuse a camera with fewer crops than this (its mean would be its few people).")
@runtime_options
def fit_cameras(model, images, output, min_crops, max_batch, backend, threads) -> None:
    """Measure each camera's mean embedding of MODEL on the crops under --images and write them to --output.

    Embeddings centred with the file (`edgereid.CameraCentring.load(FILE)(embeddings, cameras)`) lose most of
    what a camera adds to every crop it sees; the gallery and its queries must both be centred. Use the model file
    the site runs (the INT8 file's means are its own).
    """
    from edgereid.datasets.site import camera_names
    from edgereid.retrieval.camera_centring import CameraCentring, check_camera_counts, model_identity
    from edgereid.runtime import Runtime

    paths, cams = camera_names(images, min_images=min_crops)
    check_camera_counts(cams, min_crops)  # before minutes of inference
    with Runtime(model, backend=backend, max_batch=max_batch, threads=threads) as rt:
        out = rt.infer_files(paths, progress="site crops")
        centring = CameraCentring.fit(out.embeddings, cams, model=model_identity(rt.metadata), min_crops=min_crops)
    centring.save(output)
    counts = ", ".join(f"{c}: {centring.counts[c]}" for c in centring.cameras)
    click.echo(f"wrote {output}: {len(centring.cameras)} cameras ({counts} crops)")
