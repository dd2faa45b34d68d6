"""End to end on CPU in a few minutes: synthetic data -> training -> ONNX -> FP16 / INT8 -> Runtime evaluation
-> report. A pipeline above the stages: it imports training, export and calibration where it calls them.

Every number in the report comes from the exported ONNX file run by `edgereid.Runtime` (the deployment
path), scored by `edgereid.evaluate`; the PyTorch model is only used to train and export.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgereid.atomic import write_json_atomic, write_text_atomic

# Sized for "under 10 minutes on a 2-core CPU": a small synthetic set (75 training identities) at its native
# 128x64, P8 x K4 re-ID batches, 3 gender batches per re-ID batch (gender learns slower than identity on
# this data), a high Adam LR with cosine decay in the budget, then the gender-only stage on the frozen
# backbone (a tenth of the budget). Measured on the 2-core Zen 4 EPYC: generation 4 s, training 311 s, export,
# quantization and evaluation 26 s (rank-1 0.79, gender accuracy 0.83); with the steps a 3x slower CPU trains
# in the budget (--minutes 1.7 here) rank-1 0.67, gender 0.82.
# Training is a wall-clock budget, not an epoch count, so the quickstart takes about the same time on every
# CPU: a slow one trains fewer steps within it (the LR schedule still ends inside the budget).
QUICKSTART_MINUTES = 5.0
REAL_DATA_MINUTES = 20.0
QUICKSTART_DATA = dict(num_ids=150, images_per_id_per_cam=3, num_cameras=4, gender_images=1200, seed=0)
QUICKSTART_TRAIN = dict(
    # The synthetic crops are drawn at 128x64; training and exporting at that size (stored in the model
    # config and the ONNX metadata, so the runtime resizes to it) buys 4x the steps of 256x128 in the budget.
    image_height=128, image_width=64, pad=5,
    epochs=20, stage2_epochs=4, reid_p=8, reid_k=4, gender_batch=32, gender_ratio=3.0,
    lr_reid=1e-3, lr_gender=1e-3, stage2_lr=1e-4, warmup_epochs=1, lr_schedule="cosine",
    eval_every=0, cache_images=True, device="cpu", tensorboard=False,
    # BCE alone: with the gender triplet (on the batch-standardised feature, which no longer collapses) the
    # slow-CPU budget reached gender 0.76 and rank-1 0.50 against 0.82 / 0.67 without it.
    gender_triplet_weight=0.0,
)


def evaluate_onnx(model_path: str | os.PathLike, splits, gender_records: list, threads: int | None = None) -> dict:
    """Re-ID rank-1/mAP and gender accuracy of a model file run by edgereid.Runtime (fractions).

    A TensorRT-form INT8 file is scored with TensorRT's arithmetic emulated (`Runtime.for_checking`), so its
    numbers are the same on every CPU and describe the engine it is built for.
    """
    from edgereid import Runtime

    from edgereid.retrieval.metrics import gender_accuracy, reid_scores

    with Runtime.for_checking(model_path, threads=threads) as rt:
        q = rt.infer_files([r.path for r in splits.query])
        g = rt.infer_files([r.path for r in splits.gallery])
        gp = rt.infer_files([r.path for r in gender_records])
    reid = reid_scores(q.embeddings, g.embeddings, splits.pids("query"), splits.pids("gallery"),
                       splits.camids("query"), splits.camids("gallery"))
    return {"reid": reid, "gender": {"accuracy": gender_accuracy(gp.gender_prob, [r.label for r in gender_records]),
                                     "num_images": len(gender_records)},
            "_embeddings": (q.embeddings, g.embeddings, g.gender_prob)}


def quantize_models(onnx_path: str | os.PathLike, calibration_paths: list, num: int = 128,
                    policy=None, echo: Callable | None = None) -> dict:
    """{"fp16": path, "int8": path} next to `onnx_path`, the INT8 one calibrated on `num` of `calibration_paths`.

    INT8 follows the INT8 policy (`calibration.int8_policy.DEFAULT_POLICY`, or `policy`), the same calibration
    sampling and plan as `edgereid calibrate` + `edgereid quantize --int8`: the range method is chosen on the
    calibration crops against the cosine target, not fixed here. (On the quickstart model trained on a Zen 4
    EPYC all-INT8 min-max ranges cost the TensorRT form 3.0 rank-1 points and the 99.999th percentile 0.3,
    benchmarks/README.md, "Quickstart runs": which is why a fixed method is not the default.)
    """
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.calibration.int8_policy import DEFAULT_POLICY, calibrate, quantize

    onnx_path = Path(onnx_path)
    policy = (policy or DEFAULT_POLICY).with_(num_calibration=num)
    calib = calibrate(onnx_path, calibration_paths, onnx_path.parent / "calib", policy, progress=False)
    stem = onnx_path.with_suffix("")
    int8 = quantize(onnx_path, calib, f"{stem}.int8.onnx", policy, **({"echo": echo} if echo else {}))
    return {"fp16": quantize_fp16(onnx_path, f"{stem}.fp16.onnx"), "int8": int8.path}


def search_grid(query_emb: np.ndarray, gallery_emb: np.ndarray, splits, out_png: Path, num_queries: int = 6,
                top_k: int = 8, gallery_gender: np.ndarray | None = None) -> Path:
    """Gallery search (edgereid.Gallery) for a few queries, drawn as a query -> top-k PNG grid."""
    from edgereid import Gallery, read_image
    from edgereid.retrieval.search_report import Tile, save_grid_png

    gallery = Gallery(dim=gallery_emb.shape[1])
    gallery.add(gallery_emb, ids=[r.pid for r in splits.gallery], cameras=[r.camid for r in splits.gallery],
                gender_prob=gallery_gender, meta=[r.path for r in splits.gallery])
    picks = np.linspace(0, len(splits.query) - 1, num_queries).astype(int)
    hits = gallery.search(query_emb[picks], k=top_k)
    rows = []
    for qi, row in zip(picks, hits):
        q = splits.query[qi]
        rows.append((Tile(read_image(q.path), title="query", id=q.pid),
                     [Tile(read_image(h.meta), title=f"#{n + 1}", distance=h.distance, gender_prob=h.gender_prob,
                           id=h.id) for n, h in enumerate(row)]))
    return save_grid_png(out_png, rows)


def synthetic_data(out: Path, seed: int, overrides: dict | None, progress: bool) -> tuple:
    """(splits, gender train, gender test, summary) of the generated set under `out` (reused when it exists)."""
    from edgereid.datasets import load_gender_list, load_market1501
    from edgereid.training.synthetic import generate_synthetic

    data = generate_synthetic(out, **{**QUICKSTART_DATA, "seed": seed, **(overrides or {})}, progress=progress)
    splits = load_market1501(data["reid_root"])
    train_paths = {r.path for r in splits.train}
    reid_gender = [r for r in load_gender_list(data["reid_gender_csv"]) if r.path in train_paths]
    summary = {k: data[k] for k in ("num_train_ids", "num_test_ids", "num_train_images", "num_query",
                                    "num_gallery", "num_gender_train", "num_gender_test")}
    summary["source"] = "synthetic"
    summary.update(reid_root=data["reid_root"], gender_test_csv=data["gender_test_csv"])  # named in train/config.yaml
    return splits, load_gender_list(data["gender_train_csv"]) + reid_gender, \
        load_gender_list(data["gender_test_csv"]), summary


def real_data(reid_data, gender_data, reid_dataset: str = "market1501", gender_test_data=None,
              seed: int = 0, gender_val_fraction: float = 0.2, reid_options: dict | None = None) -> tuple:
    """(splits, gender train, gender test, summary) of a user's data: any re-ID layout edgereid reads and a gender
    list, attribute table or PETA folder (a held-out share of it when no test set is given)."""
    from edgereid.datasets import load_gender_dataset, load_reid_dataset
    from edgereid.training.trainer import split_gender

    splits = load_reid_dataset(reid_dataset, reid_data, **(reid_options or {}))
    gender = load_gender_dataset(gender_data)
    if gender_test_data:
        gender_train, gender_test = gender, load_gender_dataset(gender_test_data)
    else:
        gender_train, gender_test = split_gender(gender, gender_val_fraction, seed)
    summary = {"source": {"reid": str(reid_data), "reid_dataset": reid_dataset, "gender": str(gender_data),
                          "gender_test": str(gender_test_data) if gender_test_data else None},
               "num_train_ids": splits.num_train_pids, "num_test_ids": len({r.pid for r in splits.gallery}),
               "num_train_images": len(splits.train), "num_query": len(splits.query),
               "num_gallery": len(splits.gallery), "num_gender_train": len(gender_train),
               "num_gender_test": len(gender_test)}
    return splits, gender_train, gender_test, summary


def training_data_fields(train_dir: Path, data: dict, gender_train: list, reid_data, reid_dataset: str,
                         gender_data, gender_test_data, reid_options: dict | None) -> dict:
    """TrainConfig fields naming the quickstart's training data. The synthetic set's gender training records (the
    gender set's training part and the re-ID training people) go into TRAIN_DIR/gender_train.csv."""
    if reid_data is not None:
        fields = {"reid_data": str(reid_data), "reid_dataset": reid_dataset, "gender_data": str(gender_data),
                  "gender_test_data": str(gender_test_data) if gender_test_data else ""}
        if reid_options and "val_ids" in reid_options:
            fields["reid_val_ids"] = reid_options["val_ids"]
        return fields
    train_dir.mkdir(parents=True, exist_ok=True)
    from edgereid.datasets.attribute_labels import attribute_matrix, data_attribute_names

    listing = train_dir / "gender_train.csv"
    # the attribute columns too (empty = unknown): a resumed run finds the labels its head was trained on
    names = data_attribute_names(gender_train)
    labels = attribute_matrix(gender_train, names)
    rows = [",".join([os.path.relpath(r.path, train_dir.resolve()), str(r.label),
                      *("" if v < 0 else str(v) for v in row)]) for r, row in zip(gender_train, labels.tolist())]
    write_text_atomic(listing, ",".join(["path", "label", *names]) + "\n" + "\n".join(rows) + "\n")
    return {"reid_data": str(data["reid_root"]), "reid_dataset": "market1501", "gender_data": str(listing),
            "gender_test_data": str(data["gender_test_csv"])}


def run_quickstart(out_dir: str | os.PathLike = "runs/quickstart", threads: int = 2, seed: int = 0,
                   progress: bool = True, data_overrides: dict | None = None, train_overrides: dict | None = None,
                   quantize: bool = True, num_calibration: int = 128, echo: Callable = print,
                   reid_data=None, gender_data=None, reid_dataset: str = "market1501", gender_test_data=None,
                   minutes: float | None = None, reid_options: dict | None = None, int8_policy=None) -> dict:
    """Data, training, ONNX export, FP16 and INT8 (calibrated on `num_calibration` training images), every file
    evaluated with the Runtime, a search grid and report.md/report.json; returns the report.

    INT8 follows `int8_policy` (a `calibration.int8_policy.Int8Policy`; default: the policy of `edgereid quantize
    --int8`, the sensitivity plan). `DEFAULT_POLICY.with_(plan=False, method="percentile")` writes every layer in
    INT8 without the plan's search, which on a barely trained model tries every layer (minutes).

    Without `reid_data` the data is the generated synthetic set and the training the quickstart's short recipe;
    with `reid_data` and `gender_data` it is the user's data, trained by the cpu recipe. Training takes `minutes`
    (default QUICKSTART_MINUTES, or REAL_DATA_MINUTES on real data; 0 = the recipe's epoch counts decide).
    """
    import torch

    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.recipes import recipe
    from edgereid.training.trainer import Trainer
    from edgereid.retrieval.metrics import reid_scores

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    timings: dict = {}

    # 1. data: the synthetic set, or the user's
    t = time.perf_counter()
    if reid_data is None:
        splits, gender_train, gender_test, data = synthetic_data(out / "data", seed, data_overrides, progress)
        train_fields = {**QUICKSTART_TRAIN, "minutes": QUICKSTART_MINUTES if minutes is None else minutes}
    else:
        if gender_data is None:
            from edgereid.errors import InvalidInputError

            raise InvalidInputError("the real-data quickstart needs gender data too: pass --gender-data (a "
                                    "path,label list, an attribute table or a PETA folder).")
        splits, gender_train, gender_test, data = real_data(reid_data, gender_data, reid_dataset,
                                                            gender_test_data, seed, reid_options=reid_options)
        train_fields = {**recipe("cpu"), "minutes": REAL_DATA_MINUTES if minutes is None else minutes}
    timings["generate_s"] = time.perf_counter() - t
    echo(f"data: {len(splits.train)} training images of {splits.num_train_pids} identities, "
         f"{len(splits.query)} query / {len(splits.gallery)} gallery, {len(gender_train)} gender images "
         f"({timings['generate_s']:.1f} s)")

    # 2. training (both tasks, then the gender-only stage); the config names the data, so that
    # `edgereid train --out OUT/train --resume` reads the same records
    t = time.perf_counter()
    data_fields = training_data_fields(out / "train", data, gender_train, reid_data, reid_dataset, gender_data,
                                       gender_test_data, reid_options)
    cfg = TrainConfig(out=str(out / "train"), seed=seed, threads=threads, progress=progress,
                      **{**train_fields, **data_fields, **(train_overrides or {})})
    trainer = Trainer(cfg, splits, gender_train, gender_test)
    train_metrics = trainer.fit()
    timings["train_s"] = time.perf_counter() - t
    echo(f"training: {trainer.state['step']} steps in {timings['train_s']:.0f} s; PyTorch eval {train_metrics}")

    # 3. export the trained weights (classifier dropped) to ONNX
    t = time.perf_counter()
    model, _ = load_checkpoint(out / "train" / "last.pt", with_classifier=False)
    onnx_path = export_onnx(model, out / "model.onnx")
    models = {"fp32": onnx_path}
    # FP16 / INT8 Q/DQ files, calibrated on training images, never the evaluation ones.
    if quantize:
        models.update(quantize_models(onnx_path, [r.path for r in splits.train], num=num_calibration,
                                      policy=int8_policy))
    timings["export_s"] = time.perf_counter() - t

    # 4. evaluate every model file through the Runtime; search + grid with the FP32 one
    t = time.perf_counter()
    results = {name: evaluate_onnx(path, splits, gender_test, threads=threads) for name, path in models.items()}
    main = results["fp32"]
    q_emb, g_emb, g_gender = main.pop("_embeddings")
    for r in results.values():
        r.pop("_embeddings", None)
    main["reid_reranked"] = reid_scores(q_emb, g_emb, splits.pids("query"), splits.pids("gallery"),
                                        splits.camids("query"), splits.camids("gallery"), rerank=True)
    grid = search_grid(q_emb, g_emb, splits, out / "search_grid.png", gallery_gender=g_gender)
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    report = {
        "reid": main["reid"], "reid_reranked": main["reid_reranked"], "gender": main["gender"],
        "models": {name: {"path": str(models[name]), **res} for name, res in results.items()},
        "pytorch_eval": train_metrics, "timings": timings, "threads": threads, "seed": seed,
        "data": data,
        "train_config": cfg.to_dict(), "files": {"onnx": str(onnx_path), "grid": str(grid),
                                                 "checkpoints": str(out / "train")},
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report, grid.name))
    echo(f"re-ID rank-1 {main['reid']['rank1']:.3f}, mAP {main['reid']['mAP']:.3f}; "
         f"gender accuracy {main['gender']['accuracy']:.3f} ({timings['total_s']:.0f} s in all)")
    echo(f"report: {out / 'report.md'} (and report.json); model: {onnx_path}; search grid: {grid}")
    return report


def render_markdown(report: dict, grid_name: str) -> str:
    """The short human-readable report."""
    tm = report["timings"]
    source = report["data"].get("source", "synthetic")
    where = ("Synthetic Market-1501-layout set" if source == "synthetic" else
             f"Re-ID data {source['reid']} ({source['reid_dataset']}), gender data {source['gender']}")
    lines = ["# edgereid quickstart report", "",
             f"{where}; numbers from the exported ONNX model run by `edgereid.Runtime`.", "",
             "| model | rank-1 | mAP | gender accuracy |", "| --- | --- | --- | --- |"]
    for name, res in report["models"].items():
        lines.append(f"| {name} | {res['reid']['rank1']:.3f} | {res['reid']['mAP']:.3f} | "
                     f"{res['gender']['accuracy']:.3f} |")
    rr = report["reid_reranked"]
    lines.append(f"| fp32, k-reciprocal re-ranked | {rr['rank1']:.3f} | {rr['mAP']:.3f} | |")
    d = report["data"]
    lines += ["", f"Data: {d['num_train_ids']} training identities ({d['num_train_images']} images), "
              f"{d['num_query']} query / {d['num_gallery']} gallery images of {d['num_test_ids']} test identities; "
              f"{d['num_gender_train']} / {d['num_gender_test']} gender train / test images.", "",
              f"Time ({report['threads']} threads): generation {tm['generate_s']:.0f} s, training {tm['train_s']:.0f} s, "
              f"export {tm['export_s']:.0f} s, evaluation {tm['evaluate_s']:.0f} s, total {tm['total_s']:.0f} s.", "",
              "## Gallery search (query -> top-k)", "", f"![search grid]({grid_name})", ""]
    return "\n".join(lines)
