"""`edgereid calibrate`: a calibration set (preprocessed shards + manifest) for a model's INT8 quantization."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("calibrate")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of person crops (searched recursively); Market-1501 names (0001_c1s1_...) give "
                   "stratification by identity and camera.")
@click.option("--num", type=int, default=None,
              help="Images to sample [default: the INT8 policy's, 512]; fewer in the folder is a warning.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Calibration set folder to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard-size", type=int, default=128, show_default=True)
def calibrate(model, images, num, output, seed, shard_size) -> None:
    """Sample images, preprocess them exactly as MODEL's runtime does, and store them with a manifest."""
    from edgereid.calibration.int8_policy import DEFAULT_POLICY, calibrate as build

    policy = DEFAULT_POLICY.with_(**({"num_calibration": num} if num is not None else {}), seed=seed)
    calib = build(model, images, output, policy, shard_size=shard_size)
    m = calib.manifest
    strat = f", stratified by {'/'.join(m.stratified_by)}" if m.stratified_by else ""
    asked = f" ({m.requested} asked)" if m.requested and m.requested != m.count else ""
    click.echo(f"wrote {output}: {m.count} images{asked} {m.shape} {m.dtype}{strat}, preprocessing "
               f"{m.preprocessing_hash}")

