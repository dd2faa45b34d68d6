"""`edgereid eval`: CMC / mAP (optionally re-ranked) of a model on a re-ID data set, plus a gender report and,
for a model with an attribute head, an attribute report (mA and instance-based scores)."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import dataset_option, runtime_options, subset_names
from edgereid.retrieval.metrics import MODES


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data_root", type=click.Path(path_type=Path))
@dataset_option("--dataset", default="market1501", what="DATA_ROOT")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="market1501", show_default=True,
              help="Evaluation protocol (see edgereid.retrieval.metrics).")
@click.option("--centre-cameras", is_flag=True,
              help="Centre embeddings per camera first (each camera's mean over the query and gallery crops, no "
                   "labels): what edgereid.CameraCentring would give on this set.")
@click.option("--gender-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Gender labels (list or attribute table) to score the gender head on.")
@click.option("--attributes-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Attribute-labelled crops to score the attribute head on: a PETA folder or subset (its "
                   "Label.txt words) or a CSV `path,label,<attribute>,...` (1/0; empty or -1 = unknown).")
@click.option("--attributes-subsets", default=None, metavar="A,B",
              help="With a PETA folder as --attributes-data: the subsets to score (e.g. PRID,GRID) [default: all].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the numbers to this JSON file.")
@runtime_options
def eval_command(model, data_root, dataset, rerank, metric, mode, centre_cameras, gender_list, attributes_data,
                 attributes_subsets, json_out, max_batch, backend, threads) -> None:
    """Evaluate MODEL on the query / gallery split of the data set at DATA_ROOT."""
    import numpy as np

    from edgereid.datasets import load_gender_dataset, load_reid_dataset
    from edgereid.retrieval.metrics import evaluate, gender_report, retrieval_distances
    from edgereid.runtime import Runtime

    from edgereid.datasets.records import check_splits

    splits = check_splits(load_reid_dataset(dataset, data_root), need_train=False)  # a training-only folder
    report = {"model": str(model), "dataset": dataset, "root": str(data_root), "rerank": rerank,
              "metric": metric, "centre_cameras": centre_cameras}
    with Runtime(model, backend=backend, max_batch=max_batch, threads=threads) as rt:
        q = rt.infer_files([r.path for r in splits.query], progress="query")
        g = rt.infer_files([r.path for r in splits.gallery], progress="gallery")
        gender = None
        if gender_list is not None:
            if not rt.metadata.has_gender:
                raise click.UsageError(f"{model} has no gender head (an imported re-ID network); drop the gender "
                                       f"data option.")
            recs = load_gender_dataset(gender_list)
            out = rt.infer_files([r.path for r in recs], progress="gender")
            gender = gender_report([r.label for r in recs], out.gender_prob,
                                   classes=(rt.metadata.gender_negative_class, rt.metadata.gender_positive_class))
        attributes = None
        if attributes_data is not None:
            attributes = attribute_report(rt, attributes_data, attributes_subsets)
    ids = [np.array([getattr(r, k) for r in recs]) for recs in (splits.query, splits.gallery) for k in ("pid", "camid")]
    qe, ge = q.embeddings, g.embeddings
    if centre_cameras:
        from edgereid.retrieval.camera_centring import centre_per_camera

        both = centre_per_camera(np.concatenate([qe, ge]), np.concatenate([ids[1], ids[3]]))
        qe, ge = both[:len(qe)], both[len(qe):]
    dist = retrieval_distances(qe, ge, metric, rerank, progress=True)
    res = evaluate(dist, ids[0], ids[2], ids[1], ids[3], mode=mode)
    click.echo(str(res))
    report["reid"] = res.to_dict()
    if gender is not None:
        click.echo("\nGender\n" + gender.table())
        report["gender"] = gender.to_dict()
    if attributes is not None:
        click.echo("\nAttributes\n" + attributes.table())
        report["attributes"] = attributes.to_dict()
    if json_out:
        from edgereid.atomic import write_json_atomic
        write_json_atomic(json_out, report)
        click.echo(f"wrote {json_out}")


def attribute_report(rt, data: Path, subsets: str | None):
    """Score the attribute head of the Runtime `rt` on the labelled crops at `data` (a PETA folder or subset, or
    an attribute CSV); an AttributeReport. A model without an attribute output is a usage error."""
    from edgereid.datasets import load_gender_dataset
    from edgereid.datasets.attribute_labels import attribute_matrix
    from edgereid.errors import ModelFileError
    from edgereid.retrieval.attribute_metrics import attribute_scores

    names = tuple(getattr(rt, "attribute_names", None) or ())
    if not names:
        raise click.UsageError(f"the model has no attribute output, so --attributes-data {data} cannot be scored; "
                               f"drop it, or evaluate a model trained with attributes.")
    recs = load_gender_dataset(data, subsets=subset_names(subsets))
    labels = attribute_matrix(recs, names)
    if not (labels >= 0).any():
        raise click.UsageError(f"{data} gives no label for any of the model's attributes ({', '.join(names)}); "
                               f"pass a PETA folder or a CSV with those columns.")
    out = rt.infer_files([r.path for r in recs], progress="attributes")
    if out.attributes is None:
        raise ModelFileError("the model names attributes but its runtime output has none; re-export it with "
                             "this edgereid version.")
    return attribute_scores(out.attributes, labels, names)
