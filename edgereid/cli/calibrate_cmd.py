"""`edgereid calibrate`: a calibration set (preprocessed shards + manifest) for a model's INT8 quantization."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("calibrate")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of person crops (searched recursively); Market-1501 names give stratification.")
@click.option("--num", type=int, default=512, show_default=True, help="Images to sample.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Calibration set folder to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard-size", type=int, default=128, show_default=True)
def calibrate(model, images, num, output, seed, shard_size) -> None:
    """Sample images, preprocess them exactly as MODEL's runtime does, and store them with a manifest."""
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.export.metadata import get_metadata, load_onnx

    meta = get_metadata(load_onnx(model), source=str(model))
    source = _records_or_folder(images)
    calib = build_calibration_set(source, meta, output, num=num, seed=seed, shard_size=shard_size)
    m = calib.manifest
    strat = f", stratified by {'/'.join(m.stratified_by)}" if m.stratified_by else ""
    click.echo(f"wrote {output}: {m.count} images {m.shape} {m.dtype}{strat}, preprocessing {m.preprocessing_hash}")


def _records_or_folder(folder: Path):
    """Market-1501-style names (0001_c1s1_...) carry identity and camera: use them to stratify."""
    import re

    pattern = re.compile(r"^(-?\d+)_c(\d+)")
    from edgereid.imageio import list_images

    files = list_images(folder, recursive=True)
    parsed = [pattern.match(p.name) for p in files]
    if files and all(parsed):
        from types import SimpleNamespace

        return [SimpleNamespace(path=str(p), pid=int(m.group(1)), camid=int(m.group(2))) for p, m in zip(files, parsed)]
    return folder
