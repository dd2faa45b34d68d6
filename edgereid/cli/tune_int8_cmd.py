"""`edgereid tune-int8`: tune an INT8 file's weights, biases and activation scales against its fp32 file."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("tune-int8")
@click.argument("int8_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fp32", "fp32_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The fp32 ONNX file the INT8 file was quantized from (`edgereid export`'s): the teacher.")
@click.option("--images", "folders", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of person crops (searched recursively, no labels); repeat for several. The model's "
                   "training crops or the site's; not the crops parity will score.")
@click.option("--minutes", type=float, default=10.0, show_default=True, help="Wall-clock budget of the steps.")
@click.option("--steps", type=int, default=0, help="Stop after this many steps too (0: the budget alone).")
@click.option("--lr", type=float, default=3e-6, show_default=True, help="Adam on the weights and biases.")
@click.option("--scale-lr", type=float, default=3e-3, show_default=True,
              help="Adam on the activation scales' logarithms (0 keeps the file's scales).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--head-weight", type=float, default=4.0, show_default=True,
              help="Weight of the gender and attribute decisions' KL divergence against the embedding's 1 - cosine.")
@click.option("--max-images", type=int, default=8192, show_default=True,
              help="Crops held in memory, drawn evenly from the folders.")
@click.option("--check-images", type=int, default=256, show_default=True,
              help="Crops held out of the steps: scored as the steps go, the best state is the one written.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime threads for the teacher and the scores.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The tuned INT8 file (.onnx).")
def tune_int8(int8_file, fp32_file, folders, minutes, steps, lr, scale_lr, batch_size, head_weight, max_images,
              check_images, threads, output) -> None:
    """Tune INT8_FILE (from `edgereid quantize --int8`) so that it answers like FP32_FILE: its own weights, biases
    and activation scales are trained, on its own integer grids, through a copy of its graph that computes what
    ONNX Runtime computes. The result is an INT8 file of the same form; check it against the checkpoint:

        edgereid parity CHECKPOINT OUT.onnx --data EVAL --calib CALIB
    """
    from edgereid._optional import require

    require("torch")
    from edgereid.calibration.int8_tune import TuneConfig, tune_int8_file
    from edgereid.imageio import list_images
    from edgereid.progress import on_terminal

    paths = [str(p) for folder in folders for p in list_images(folder, recursive=True)]
    config = TuneConfig(minutes=minutes, steps=steps, lr=lr, scale_lr=scale_lr, batch_size=batch_size,
                        head_weight=head_weight, max_images=max_images, check_images=check_images)
    result = tune_int8_file(int8_file, fp32_file, paths, output, config, threads=threads, progress=on_terminal(),
                            echo=click.echo)
    show = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
    click.echo(f"the INT8 file against {fp32_file.name} on {config.check_images} held-out crops (ONNX Runtime):")
    click.echo(f"  before: {show(result.before)}")
    click.echo(f"  after {result.steps} steps ({result.seconds:.0f} s, best at step {result.best_step}): "
               f"{show(result.after)}")
    click.echo(f"wrote {output}: check it with `edgereid parity <checkpoint> {output} --data ... --calib ...`")
