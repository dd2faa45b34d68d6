"""`edgereid infer`: embeddings and gender for image files, with any model file."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("infer")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-crop embeddings and gender to this JSON file.")
@click.option("--max-batch", type=int, default=32, show_default=True)
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt"]), default=None,
              help="Default: chosen from the model file's suffix.")
@click.option("--threads", type=int, default=None, help="CPU threads for the backend.")
def infer(model, images, json_out, max_batch, backend, threads) -> None:
    """Run MODEL (.onnx, .engine or .pt) on IMAGES (files or folders of crops)."""
    from tqdm import tqdm

    from edgereid.atomic import write_json_atomic
    from edgereid.output import Output
    from edgereid.runtime import Runtime

    files = []
    for item in images:
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
        else:
            files.append(item)
    if not files:
        raise click.UsageError("no image files found in the given paths.")
    with Runtime(model, backend=backend, max_batch=max_batch, threads=threads) as rt:
        parts = []
        for lo in tqdm(range(0, len(files), rt.max_batch), desc="infer", unit="batch", disable=len(files) <= rt.max_batch):
            parts.append(rt.infer_files(files[lo:lo + rt.max_batch]))
        out = Output.concat(parts, rt.metadata.embedding_dim, rt.metadata.gender_positive_class,
                            rt.metadata.gender_negative_class)
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
