"""`edgereid eval`: CMC / mAP (optionally re-ranked) of a model on a re-ID data set, plus a gender report."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import dataset_option, runtime_options
from edgereid.retrieval.metrics import MODES


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data_root", type=click.Path(path_type=Path))
@dataset_option("--dataset", default="market1501", what="DATA_ROOT")
@click.option("--rerank", is_flag=True, help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean", show_default=True)
@click.option("--mode", type=click.Choice(MODES), default="market1501", show_default=True,
              help="Evaluation protocol (see edgereid.retrieval.metrics).")
@click.option("--gender-list", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Gender labels (list or attribute table) to score the gender head on.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the numbers to this JSON file.")
@runtime_options
def eval_command(model, data_root, dataset, rerank, metric, mode, gender_list, json_out, max_batch, backend,
                 threads) -> None:
    """Evaluate MODEL on the query / gallery split of the data set at DATA_ROOT."""
    import numpy as np

    from edgereid.datasets import load_gender_dataset, load_reid_dataset
    from edgereid.retrieval.metrics import evaluate, gender_report, retrieval_distances
    from edgereid.runtime import Runtime

    from edgereid.datasets.records import check_splits

    splits = check_splits(load_reid_dataset(dataset, data_root), need_train=False)  # a training-only folder
    report = {"model": str(model), "dataset": dataset, "root": str(data_root), "rerank": rerank,
              "metric": metric}
    with Runtime(model, backend=backend, max_batch=max_batch, threads=threads) as rt:
        q = rt.infer_files([r.path for r in splits.query], progress="query")
        g = rt.infer_files([r.path for r in splits.gallery], progress="gallery")
        gender = None
        if gender_list is not None:
            recs = load_gender_dataset(gender_list)
            out = rt.infer_files([r.path for r in recs], progress="gender")
            gender = gender_report([r.label for r in recs], out.gender_prob,
                                   classes=(rt.metadata.gender_negative_class, rt.metadata.gender_positive_class))
    ids = [np.array([getattr(r, k) for r in recs]) for recs in (splits.query, splits.gallery) for k in ("pid", "camid")]
    dist = retrieval_distances(q.embeddings, g.embeddings, metric, rerank, progress=True)
    res = evaluate(dist, ids[0], ids[2], ids[1], ids[3], mode=mode)
    click.echo(str(res))
    report["reid"] = res.to_dict()
    if gender is not None:
        click.echo("\nGender\n" + gender.table())
        report["gender"] = gender.to_dict()
    if json_out:
        from edgereid.atomic import write_json_atomic
        write_json_atomic(json_out, report)
        click.echo(f"wrote {json_out}")
