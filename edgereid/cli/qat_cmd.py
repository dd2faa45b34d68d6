"""`edgereid qat`: quantization-aware fine-tuning of a MobileOne checkpoint for its INT8 file."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("qat")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", "folders", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of person crops (searched recursively, no labels); repeat for several. The model's "
                   "training crops or the site's; not the crops parity will score.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt"]), default=None,
              help="The INT8 file it is tuned for: `edgereid quantize --int8 --target` [cpu, or the plan's].")
@click.option("--plan", "plan_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An INT8 plan of this checkpoint's export (<int8 file>.plan.json from `edgereid quantize --int8`): "
                   "tune for the file that plan writes (its float layers stay float), then replay it with "
                   "`edgereid quantize --int8 --plan`.")
@click.option("--minutes", type=float, default=10.0, show_default=True, help="Wall-clock budget of the steps.")
@click.option("--steps", type=int, default=0, help="Stop after this many steps too (0: the budget alone).")
@click.option("--lr", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--head-weight", type=float, default=1.0, show_default=True,
              help="Weight of the gender and attribute logits' squared error against the embedding's 1 - cosine.")
@click.option("--max-images", type=int, default=8192, show_default=True,
              help="Crops held in memory, drawn evenly from the folders.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The fine-tuned checkpoint (.pt).")
def qat(checkpoint, folders, target, plan_file, minutes, steps, lr, batch_size, head_weight, max_images,
        output) -> None:
    """Fine-tune a MobileOne CHECKPOINT so that its INT8 file answers like it: the model is trained to give its
    own float outputs while computing as the INT8 graph does (simulated quantization, self-distillation).

    Then export, quantize (replaying --plan when given) and check against the original:

        edgereid export OUT.pt -o model.onnx && edgereid quantize model.onnx --int8 --plan PLAN --calib CALIB ...
        edgereid parity CHECKPOINT model.int8.onnx --data EVAL --calib CALIB
    """
    from edgereid._optional import require

    require("torch")
    from edgereid.calibration.qat import QATConfig, finetune_int8
    from edgereid.imageio import list_images
    from edgereid.progress import on_terminal

    keep_float = ()
    if plan_file is not None:
        from edgereid.calibration.int8_plan import Int8Plan

        plan = Int8Plan.load(plan_file)
        if target is not None and target != plan.target:
            raise click.UsageError(f"{plan_file} is a plan for the {plan.target} form; drop --target or use that one.")
        target, keep_float = plan.target, tuple(plan.keep_float)
    target = target or "cpu"
    paths = [str(p) for folder in folders for p in list_images(folder, recursive=True)]
    config = QATConfig(target=target, keep_float=keep_float, minutes=minutes, steps=steps, lr=lr,
                       batch_size=batch_size, head_weight=head_weight, max_images=max_images)
    result = finetune_int8(checkpoint, paths, output, config, progress=on_terminal(), echo=click.echo)
    show = lambda d: ", ".join(f"{k} {v:.4f}" for k, v in d.items())  # noqa: E731
    click.echo(f"simulated INT8 ({target} form) against the float model on {config.check_images} held-out crops:")
    click.echo(f"  before: {show(result.before)}")
    click.echo(f"  after {result.steps} steps ({result.seconds:.0f} s): {show(result.after)}")
    replay = f" --plan {plan_file}" if plan_file is not None else f" --target {target}"
    click.echo(f"wrote {output}: export it, `edgereid quantize <its .onnx> --int8{replay} ...`, then "
               f"`edgereid parity {checkpoint} <that INT8 file> ...`")
