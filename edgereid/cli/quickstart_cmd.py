"""`edgereid quickstart`: synthetic data -> train on CPU -> ONNX -> evaluate -> report, in minutes."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import dataset_option


@click.command("quickstart")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/quickstart"),
              show_default=True, help="Folder for data, checkpoints, model.onnx and the report.")
@click.option("--threads", type=int, default=2, show_default=True, help="CPU threads for training and inference.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--epochs", type=int, help="Train this many stage-1 epochs instead of a time budget.")
@click.option("--no-quantize", is_flag=True, help="Skip the FP16 / INT8 Q/DQ models and their evaluation.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.option("--reid-data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Your re-ID data instead of the synthetic set (any layout --reid-dataset names).")
@dataset_option("--reid-dataset", default="market1501", what="--reid-data")
@click.option("--gender-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --reid-data: a gender list, attribute table or PETA folder (20%% held out for testing "
                   "unless --gender-test-data is given).")
@click.option("--gender-test-data", type=click.Path(exists=True, path_type=Path), default=None)
@click.option("--minutes", type=float, default=None,
              help="Training time budget (default: 5 on the synthetic set, 20 with --reid-data); the LR schedule "
                   "ends inside it whatever the CPU's speed.")
def quickstart(out, threads, seed, epochs, no_quantize, no_progress, reid_data, reid_dataset, gender_data,
               gender_test_data, minutes) -> None:
    """Run the whole pipeline end to end on CPU (about 6 minutes on any 2-core CPU) and write a report.

    With --reid-data and --gender-data the same pipeline runs on your data (training: the cpu recipe within
    --minutes)."""
    from edgereid._optional import require

    require("torch")
    require("onnx")
    from edgereid.pipelines.quickstart import run_quickstart

    if epochs and minutes:
        raise click.UsageError("--epochs and --minutes both size the training; give one of them.")
    overrides = {"epochs": epochs, "minutes": 0.0} if epochs else None
    if (gender_data or gender_test_data) and reid_data is None:
        raise click.UsageError("--gender-data goes with --reid-data (the synthetic set brings its own).")
    run_quickstart(out, threads=threads, seed=seed, progress=not no_progress, train_overrides=overrides,
                   quantize=not no_quantize, echo=click.echo, reid_data=reid_data, gender_data=gender_data,
                   reid_dataset=reid_dataset, gender_test_data=gender_test_data, minutes=minutes)
