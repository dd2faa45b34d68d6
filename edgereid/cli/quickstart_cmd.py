"""`edgereid quickstart`: synthetic data -> train on CPU -> ONNX -> evaluate -> report, in minutes."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("quickstart")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quickstart"),
              show_default=True, help="Folder for data, checkpoints, model.onnx and the report.")
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for training and inference.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, help="Override the quickstart's stage-1 epochs (more = better, slower).")
@click.option("--no-quantize", is_flag=True, help="Skip the FP16 / INT8 Q/DQ models and their evaluation.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def quickstart(out, threads, seed, epochs, no_quantize, no_progress) -> None:
    """Run the whole pipeline end to end on CPU (about 5-10 minutes on 2 cores) and write a report."""
    from edgereid._optional import require

    require("torch")
    require("onnx")
    from edgereid.pipelines.quickstart import run_quickstart

    overrides = {"epochs": epochs} if epochs else None
    run_quickstart(out, threads=threads, seed=seed, progress=not no_progress, train_overrides=overrides,
                   quantize=not no_quantize, echo=click.echo)
