"""`edgereid infer`: embeddings, gender and (for a model with an attribute head) attribute probabilities for image
files, with any model file."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from edgereid.cli.options import runtime_options


def csv_text(names: list, out) -> str:
    """One CSV row per crop: name, gender, gender_prob (both empty without a gender head), then one P(attribute)
    column per attribute name (none without an attribute head). Embeddings are left to --json: 128 columns help
    no spreadsheet."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "gender", "gender_prob", *out.attribute_names])
    labels = out.gender_labels
    for i, name in enumerate(names):
        attrs = [f"{p:.6f}" for p in out.attributes[i]] if out.attributes is not None else []
        gender = ["", ""] if labels is None else [labels[i], f"{float(out.gender_prob[i]):.6f}"]
        writer.writerow([name, *gender, *attrs])
    return buf.getvalue()


@click.command("infer")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-crop embeddings, gender and attribute probabilities to this JSON file.")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-crop gender and attribute probabilities to this CSV file.")
@runtime_options
def infer(model, images, json_out, csv_out, max_batch, backend, threads) -> None:
    """Run MODEL (.onnx, .engine or .pt) on IMAGES (files or folders of crops)."""
    from edgereid.atomic import write_json_atomic, write_text_atomic
    from edgereid.imageio import list_images
    from edgereid.runtime import Runtime

    files = []
    for item in images:
        files += list_images(item) if item.is_dir() else [item]
    if not files:
        raise click.UsageError("no image files found in the given paths.")
    with Runtime(model, backend=backend, max_batch=max_batch, threads=threads) as rt:
        out = rt.infer_files(files, progress="infer" if len(files) > rt.max_batch else False)
        labels = out.gender_labels  # None: a model without a gender head (an imported re-ID network)
        for i, path in enumerate(files):
            attrs = out.attribute_dict(i)
            shown = "" if attrs is None else "\t" + " ".join(f"{k}={v:.3f}" for k, v in attrs.items())
            gender = ("" if labels is None else
                      f"\t{labels[i]}\tP({rt.metadata.gender_positive_class})={out.gender_prob[i]:.3f}")
            click.echo(f"{path}{gender}{shown}")
        if json_out:
            write_json_atomic(json_out, {
                "model": str(model),
                "backend": rt.backend_name,
                "metadata": rt.metadata.to_dict(),
                "attribute_names": list(rt.attribute_names),
                "results": out.to_records([str(p) for p in files]),
            })
            click.echo(f"wrote {json_out} ({len(files)} crops)")
        if csv_out:
            write_text_atomic(csv_out, csv_text([str(p) for p in files], out))
            click.echo(f"wrote {csv_out} ({len(files)} crops)")
