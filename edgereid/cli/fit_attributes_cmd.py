"""`edgereid fit-attributes`: fit a checkpoint's attribute layer again, on its own tap or on another one."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import subset_names


@click.command("fit-attributes")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data", type=click.Path(exists=True, path_type=Path), required=True,
              help="Attribute-labelled crops: a PETA folder, or a CSV / attribute table (as `edgereid train "
                   "--gender-data` takes them). Use the model's training crops, not the ones you will score on.")
@click.option("--subsets", default=None, metavar="A,B",
              help="With a PETA folder: the subsets to fit on (e.g. 3DPeS,CAVIAR4REID) [default: all].")
@click.option("--tap", type=click.Choice(["gender_block", "layer4", "embedding"]), default=None,
              help="Move the attribute head to this feature first [default: the checkpoint's own]. `embedding` "
                   "makes the attributes a linear map of the re-ID embedding, whose INT8 error the INT8 plan "
                   "and tuning already hold down.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The checkpoint to write (.pt); may be CHECKPOINT itself.")
def fit_attributes(checkpoint, data, subsets, tap, output) -> None:
    """Fit CHECKPOINT's attribute layer on labelled crops (the convex closing fit `edgereid train` ends with:
    training/attribute_fit.py) and write the result; every other weight is kept. Then export it as usual."""
    from edgereid._optional import require

    require("torch")
    from edgereid.datasets import load_gender_dataset
    from edgereid.progress import on_terminal
    from edgereid.training.attribute_fit import refit_checkpoint

    report = refit_checkpoint(checkpoint, load_gender_dataset(data, subsets=subset_names(subsets)), output, tap=tap,
                              progress=on_terminal())
    click.echo(f"fitted {report['attributes']} attributes on {report['images']} crops ({report['tap']}; loss "
               f"{report['loss_before']:.4f} -> {report['loss_after']:.4f}, {report['seconds']:.0f} s); wrote {output}")
