"""`edgereid convert-checkpoint`: rewrite a checkpoint of an older edgereid so that it loads weights-only."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("convert-checkpoint")
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
def convert_checkpoint(source, output) -> None:
    """Rewrite SOURCE (an edgereid checkpoint whose RNG state holds numpy arrays) as OUTPUT in today's format.

    SOURCE is read with numpy arrays of plain dtypes allowed beside tensors, nothing else: a file that asks
    for any other Python object is refused, so conversion never runs code either. OUTPUT keeps the weights,
    optimizers and RNG states, so `edgereid train --resume` continues from it.
    """
    from edgereid._optional import require

    require("torch")
    from edgereid.training.checkpoint import convert_checkpoint as convert

    if source.resolve() == output.resolve():
        raise click.UsageError("write the converted checkpoint to a new file; SOURCE stays as it is.")
    path = convert(source, output)
    click.echo(f"wrote {path}: loads with torch.load(weights_only=True).")
