"""`edgereid adapt`: clustering-based adaptation to a site's unlabeled crops.

The site is generated: people the trained model never saw, filmed by cameras it never saw (another seed gives
other lighting, colour casts, blur and backgrounds). The truth is in the generated names, which adaptation
reads only for cameras; the test alone compares its pseudo-identities with the truth.
"""
from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgereid.errors import DatasetError, InvalidInputError  # noqa: E402
from edgereid.retrieval.clustering import dbscan  # noqa: E402
from edgereid.retrieval.reranking import jaccard_distance, rerank  # noqa: E402


@pytest.mark.parametrize("k1,k2", [(7, 3), (20, 6), (5, 1)])
def test_jaccard_distance_is_the_reranking_jaccard_term_of_one_set(k1, k2):
    """The reference re_ranking's Jaccard distance, computed over one set of items (each item once, every item
    a query): what cluster-contrast clusters on."""
    from benchmarks.references import reference_jaccard
    from edgereid.retrieval.distances import pairwise_distance

    rng = np.random.default_rng(k1)
    centres = rng.normal(size=(12, 16))
    x = (np.repeat(centres, 5, axis=0) + 0.3 * rng.normal(size=(60, 16))).astype(np.float32)
    d = jaccard_distance(x, k1=k1, k2=k2)
    want, _ = reference_jaccard(pairwise_distance(x, x, metric="euclidean").astype(np.float64), 60, k1, k2)
    assert d.shape == (60, 60) and d.dtype == np.float32
    assert np.allclose(d, want, atol=1e-5)
    assert np.allclose(np.diag(d), 0, atol=1e-6)
    # the query-gallery re-ranking is unchanged by the shared code path
    q, g = x[:25], x[25:]
    from benchmarks.references import reference_re_ranking

    qg, qq, gg = (pairwise_distance(a, b, metric="euclidean").astype(np.float64) for a, b in ((q, g), (q, q), (g, g)))
    assert np.allclose(rerank(q, g, k1=k1, k2=k2, lambda_value=0.3),
                       reference_re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=0.3), atol=1e-5)


def test_dbscan_matches_the_definition():
    """Core points (>= min_samples within eps, self included) connect; border points join; the rest is noise.
    Checked on a line of points where every answer can be read off by hand."""
    pos = np.array([0.0, 0.1, 0.2, 0.3, 1.0, 1.05, 3.0, 5.0, 5.1])
    d = np.abs(pos[:, None] - pos[None, :])
    assert dbscan(d, eps=0.15, min_samples=3).tolist() == [0, 0, 0, 0, -1, -1, -1, -1, -1]
    assert dbscan(d, eps=0.15, min_samples=2).tolist() == [0, 0, 0, 0, 1, 1, -1, 2, 2]
    # a border point (reachable, not core) joins, but does not extend the cluster
    pos = np.array([0.0, 0.1, 0.2, 0.34, 0.5])
    d = np.abs(pos[:, None] - pos[None, :])
    assert dbscan(d, eps=0.15, min_samples=3).tolist() == [0, 0, 0, 0, -1]
    with pytest.raises(Exception, match="square"):
        dbscan(np.zeros((3, 4)), eps=0.5)


def _truth(path: str) -> tuple:
    m = re.match(r"(-?\d+)_c(\d+)", Path(path).name)
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A generated site: 40 unseen people x 3 unseen cameras x 3 crops (360 crops), in two sub-folders to check
    the recursive search; distractor and junk crops left out (they belong to no one)."""
    import shutil

    from edgereid.training.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("site")
    s = generate_synthetic(root / "gen", num_ids=40, images_per_id_per_cam=3, num_cameras=3, gender_images=4,
                           image_size=(64, 32), num_distractors=0, num_junk=0, seed=23, progress=False,
                           test_id_fraction=0.5)
    crops = root / "crops"
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        for p in sorted((Path(s["reid_root"]) / sub).glob("*.jpg")):
            dest = crops / ("day1" if int(p.name[:4]) % 2 else "day2") / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
    female = {}
    with open(s["reid_gender_csv"]) as f:
        for row in csv.DictReader(f):
            female[_truth(row["path"])[0]] = int(row["label"])
    return {"crops": crops, "female": female}


def _site_outputs(model, crops: Path) -> tuple:
    """(records, embeddings, P(female)) of the site's crops with `model` (the shared preprocessing)."""
    from edgereid.datasets.site import load_site_crops
    from edgereid.metadata import ModelMetadata
    from edgereid.training.data import ReidDataset
    from edgereid.training.transforms import EvalTransform
    from edgereid.training.validate import model_outputs

    recs = load_site_crops(crops, cameras_from_names=True)
    meta = ModelMetadata(height=model.config.input_height, width=model.config.input_width)
    out = model_outputs(model, ReidDataset(recs, EvalTransform(meta)))
    return recs, out["embedding"], out["gender_prob"]


def _scores(model, site) -> dict:
    """Cross-camera rank-1 (every crop a query), gender accuracy, and the share of people whose crops get
    both genders, against the generated truth."""
    from edgereid.retrieval.metrics import reid_scores

    recs, emb, prob = _site_outputs(model, site["crops"])
    pids = np.array([_truth(r.path)[0] for r in recs])
    cams = [r.camid for r in recs]
    female = np.array([site["female"][p] for p in pids])
    calls = prob > 0.5
    return {"rank1": reid_scores(emb, emb, pids, pids, cams, cams, mode="multi_camera")["rank1"],
            "gender": float((calls == female).mean()),
            "split_people": float(np.mean([0 < calls[pids == p].mean() < 1 for p in np.unique(pids)])),
            "confident": float((np.abs(prob - 0.5) >= 0.25).mean()), "people": len(np.unique(pids))}


def test_adapt_clusters_unseen_people_and_raises_cross_camera_rank1(trained_small, site, tmp_path):
    """Pseudo-identities mostly hold one person each; cross-camera rank-1 rises; gender gets one call per
    person more often, more confidently, and no less accurately."""
    from edgereid.training.adapt import adapt
    from edgereid.training.checkpoint import load_checkpoint

    checkpoint = trained_small["out"] / "last.pt"
    before = _scores(load_checkpoint(checkpoint, with_classifier=False)[0], site)
    out = tmp_path / "adapted"
    result = adapt(checkpoint, site["crops"], out, minutes=0, cameras_from_names=True, max_rounds=3,
                   round_steps=80, p=8, k=4, threads=2, progress=False)
    assert result["round"] == 3 and result["step"] == 240
    model, ckpt = load_checkpoint(out / "adapted.pt", with_classifier=False)
    after = _scores(model, site)
    print(f"before {before}, after {after}; history {result['history']}")
    assert after["rank1"] > before["rank1"] + 0.05
    assert after["split_people"] < before["split_people"] and after["confident"] > before["confident"]
    # adapt votes gender per pseudo-identity, so accuracy moves a person's crops at a time: "no less accurately"
    # is within one person's share, 9 of the 360 crops (a float32 CPU went from 290 to 286 right)
    assert after["gender"] >= before["gender"] - 1 / before["people"]

    # the pseudo-identities against the generated truth: most clusters hold one person
    rows = list(csv.DictReader(open(out / "clusters.csv")))
    assert len(rows) == 360 and {r["path"].split("/")[0] for r in rows} == {"day1", "day2"}
    clusters: dict = {}
    for r in rows:
        if int(r["cluster"]) >= 0:
            clusters.setdefault(int(r["cluster"]), []).append(_truth(r["path"])[0])
    purity = sum(Counter(m).most_common(1)[0][1] for m in clusters.values()) / sum(map(len, clusters.values()))
    clustered = sum(map(len, clusters.values())) / len(rows)
    print(f"{len(clusters)} clusters, purity {purity:.3f}, {clustered:.2f} of the crops clustered")
    assert purity >= 0.85 and clustered >= 0.5
    final = result["history"][-1]
    assert final["round"] == "final" and final["multi_camera_clusters"] > len(clusters) // 2
    assert result["history"][1]["gender_voting_clusters"] > 0
    # the file is a checkpoint like any other: the round state and its source travel with it
    assert ckpt["adapt"]["state"]["round"] == 3
    assert ckpt["adapt"]["source"]["checkpoint"] == "last.pt"
    lines = (out / "adapt.jsonl").read_text().splitlines()
    assert len(lines) == 5  # AdaBN, 3 rounds, the final model's counts


def test_adabn_replaces_batchnorm_statistics_with_the_site_average():
    from edgereid.training.adapt import renormalise
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = DualHeadReID(input_size=(64, 32)).eval()
    x = torch.rand(20, 3, 64, 32) * 3 + 1
    data = [(img, 0, 0) for img in x]
    assert renormalise(model, data, batch_size=10) > 10
    stem_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first = model.backbone.stem[0](x) if isinstance(model.backbone.stem, torch.nn.Sequential) else None
    if first is not None:  # the stem's BatchNorm sees the first conv's output: its mean is the site's mean
        assert torch.allclose(stem_bn.running_mean, first.mean(dim=(0, 2, 3)), atol=1e-4)
    assert stem_bn.momentum == 0.1 and not model.training


def test_adapt_refuses_a_folder_with_too_few_crops(trained_small, tmp_path):
    from edgereid.training.adapt import adapt

    (tmp_path / "few").mkdir()
    import cv2

    for i in range(5):
        cv2.imwrite(str(tmp_path / "few" / f"{i:04d}_c1.jpg"), np.full((64, 32, 3), i * 40, np.uint8))
    with pytest.raises(DatasetError, match="holds 5 crops"):
        adapt(trained_small["out"] / "last.pt", tmp_path / "few", tmp_path / "out", minutes=0, max_rounds=1)
    with pytest.raises(DatasetError, match="does not exist"):
        adapt(trained_small["out"] / "last.pt", tmp_path / "missing", tmp_path / "out", minutes=0, max_rounds=1)


def test_cameras_from_names():
    from edgereid.datasets.site import camera_from_name

    assert camera_from_name("0001_c3s1_000123_00.jpg") == "3"
    assert camera_from_name("0001_a.png") == "a"
    assert camera_from_name("0001_2_25023_116.jpeg") == "2"
    assert camera_from_name("cam12_0004.jpg") == "12"
    assert camera_from_name("person.jpg") is None


def test_adapt_command_survives_ctrl_c_and_resumes(trained_small, site, tmp_path, monkeypatch):
    """`edgereid adapt`: Ctrl-C in round 2 exits 130 with round 1's checkpoint intact; --resume continues from
    it to the budget; the adapted checkpoint exports like any other."""
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.training import adapt as adapt_module
    from edgereid.training.checkpoint import load_checkpoint

    out = tmp_path / "site_run"
    args = ["adapt", str(trained_small["out"] / "last.pt"), "--images", str(site["crops"]), "--out", str(out),
            "--minutes", "0", "--cameras-from-names", "--set", "max_rounds=2", "--set", "round_steps=4",
            "--set", "p=8", "--set", "threads=2", "--set", "progress=false"]
    real_round = adapt_module.Adapter._round

    def interrupted(self):
        if self.state["round"] == 1:
            raise KeyboardInterrupt
        return real_round(self)

    monkeypatch.setattr(adapt_module.Adapter, "_round", interrupted)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 130, res.output
    assert "holds round 1" in res.output
    _, ckpt = load_checkpoint(out / "adapted.pt", with_classifier=False)
    assert ckpt["adapt"]["state"]["round"] == 1 and ckpt["adapt"]["state"]["step"] == 4
    monkeypatch.setattr(adapt_module.Adapter, "_round", real_round)
    res = CliRunner().invoke(cli, args + ["--resume"])
    assert res.exit_code == 0, res.output
    assert "done: 2 rounds, 8 steps" in res.output
    _, ckpt = load_checkpoint(out / "adapted.pt", with_classifier=False)
    assert [h["round"] for h in ckpt["adapt"]["history"]] == [0, 1, 2, "final"]
    res = CliRunner().invoke(cli, ["export", str(out / "adapted.pt"), "-o", str(tmp_path / "adapted.onnx")])
    assert res.exit_code == 0, res.output


def test_tracks_from_names():
    from edgereid.datasets.site import track_from_name, track_ids

    assert track_from_name("00017_c2_000123.jpg") == "00017"
    assert track_from_name("0001_c3s1_000123_00.jpg") == "0001"  # Market's person id is its track
    assert track_from_name("person.jpg") is None
    ids = track_ids(["7_c1_1.jpg", "7_c1_2.jpg", "7_c2_1.jpg", "8_c1_1.jpg"], [0, 0, 1, 0])
    assert ids.tolist() == [0, 0, 1, 2]  # track 7 of camera 1 is not track 7 of camera 2
    with pytest.raises(DatasetError, match="carry no track"):
        track_ids(["7_c1_1.jpg", "person.jpg"], [0, 0])


def test_pseudo_identities_cluster_tracks_whole():
    """Tracks are clustered as wholes, each a point at its crops' mean: a track's crops share one label even when
    they lie apart, a track of two or more crops that joins no cluster is its own pseudo-identity, and only a
    lone single-crop track is noise."""
    from edgereid.retrieval.distances import l2_normalize
    from edgereid.training.adapt import AdaptConfig
    from edgereid.training.pseudo_labels import _cluster, pseudo_identities

    rng = np.random.default_rng(0)
    people = rng.standard_normal((14, 32))
    # people 0-9 on both cameras (a track each), 10-13 on one camera with 3 crops or 1; track 0 also holds two
    # crops of person 5 (a tracker's identity switch): its crops still share one label
    spec = [(p, c, 3) for p in range(10) for c in (0, 1)] + [(10, 0, 3), (11, 1, 3), (12, 0, 1), (13, 1, 1)]
    crops, cams, tracks = [], [], []
    for t, (p, c, n) in enumerate(spec):
        crops.append(people[[p] * n + ([5, 5] if t == 0 else [])] + 0.3 * rng.standard_normal((n + 2 * (t == 0), 32)))
        cams += [c] * len(crops[-1])
        tracks += [t] * len(crops[-1])
    emb, cams, tracks = l2_normalize(np.concatenate(crops).astype(np.float32)), np.array(cams), np.array(tracks)
    cfg = AdaptConfig(camera_centring=False)
    labels = pseudo_identities(emb, cams, cfg, tracks)

    means = l2_normalize(np.stack([emb[tracks == t].mean(axis=0) for t in range(len(spec))]))
    per_track = _cluster(means, np.array([c for _, c, _ in spec]), cfg)
    sizes = np.bincount(tracks)
    for t in range(len(spec)):
        assert len(set(labels[tracks == t].tolist())) == 1
        if per_track[t] >= 0:  # clustered tracks keep their cluster
            assert set(labels[np.isin(tracks, np.flatnonzero(per_track == per_track[t]))].tolist()) == {
                labels[tracks == t][0]}
        elif sizes[t] >= 2:  # a lone track of several crops is its own pseudo-identity
            assert labels[tracks == t][0] >= 0 and (labels == labels[tracks == t][0]).sum() == sizes[t]
        else:
            assert labels[tracks == t][0] == -1
    lone = per_track < 0  # the example exercises every case
    assert (per_track >= 0).any() and (lone & (sizes >= 2)).any() and (lone & (sizes == 1)).any()


def test_adapt_with_tracks_labels_every_track_whole(trained_small, site, tmp_path):
    """On the generated site (names <person>_c<camera>s1_...: a person's crops on one camera are one track),
    every crop is in a pseudo-identity, one per track or more tracks, and clusters join cameras."""
    from edgereid.training.adapt import Adapter, AdaptConfig
    from edgereid.training.pseudo_labels import cluster_summary

    adapter = Adapter(trained_small["out"] / "last.pt", site["crops"], tmp_path / "out",
                      AdaptConfig(cameras_from_names=True, tracks_from_names=True, progress=False, max_rounds=1,
                                  minutes=0))
    assert len(np.unique(adapter.tracks)) == 120  # 40 people x 3 cameras
    outputs = adapter.embed()
    labels = adapter._cluster(outputs)
    assert (labels >= 0).all()
    for t in np.unique(adapter.tracks):
        assert len(set(labels[adapter.tracks == t].tolist())) == 1
    summary = cluster_summary(labels, adapter.camids, outputs["gender_prob"])
    print(summary)
    assert summary["multi_camera_clusters"] > 0


def test_adapt_can_fine_tune_only_named_stages_with_statistics_kept(trained_small, site, tmp_path):
    """train_stages fine-tunes only those backbone stages (the others, and with freeze_bn every BatchNorm's
    statistics, stay as AdaBN left them); epochs_per_round caps a round's steps by its clustered crops."""
    from edgereid.training.adapt import adapt
    from edgereid.training.checkpoint import load_checkpoint

    checkpoint = trained_small["out"] / "last.pt"
    adabn = tmp_path / "adabn"
    adapt(checkpoint, site["crops"], adabn, minutes=0, cameras_from_names=True, round_steps=0, progress=False)
    start = load_checkpoint(adabn / "adapted.pt", with_classifier=False)[0].state_dict()
    out = tmp_path / "layer4"
    result = adapt(checkpoint, site["crops"], out, minutes=0, cameras_from_names=True, max_rounds=1,
                   round_steps=500, epochs_per_round=1.0, p=8, k=4, train_stages=["layer4"], freeze_bn=True,
                   progress=False)
    clustered = result["history"][1]["clustered"]
    assert result["step"] == -(-clustered // 32) < 500  # ceil(one pass over the clustered crops / (P x K))
    after = load_checkpoint(out / "adapted.pt", with_classifier=False)[0].state_dict()
    moved = {k for k in start if start[k].is_floating_point() and not torch.equal(start[k], after[k])}
    assert any(k.startswith("backbone.layer4.") for k in moved)
    assert not [k for k in moved if k.startswith("backbone.") and not k.startswith("backbone.layer4.")]
    assert not [k for k in moved if "running_" in k]  # every BatchNorm kept its AdaBN statistics
    with pytest.raises(InvalidInputError, match="layer9"):
        adapt(checkpoint, site["crops"], tmp_path / "bad", minutes=0, cameras_from_names=True, max_rounds=1,
              train_stages=["layer9"], progress=False)


def test_the_fine_tuning_batches_hold_the_clustered_crops_with_their_own_pseudo_identity(trained_small, site,
                                                                                         tmp_path):
    """With noise crops left out, position j of the training set is the j-th clustered crop (its image from the
    embedding pass's cache, its cluster as label), never the j-th crop of the whole folder."""
    from edgereid.imageio import read_image
    from edgereid.training.adapt import Adapter, AdaptConfig

    adapter = Adapter(trained_small["out"] / "last.pt", site["crops"], tmp_path / "out",
                      AdaptConfig(cameras_from_names=True, progress=False, max_rounds=1, minutes=0))
    adapter.embed()  # fills the decoded-crop cache, as a round does before it trains
    labels = np.full(len(adapter.records), -1)
    keep = np.arange(1, len(labels), 3)  # two crops in three are noise
    labels[keep] = np.arange(len(keep)) % 7
    reid = adapter._loader(labels).dataset
    reid = getattr(reid, "reid", reid)
    assert len(reid) == len(keep)
    for j in (0, 1, len(keep) // 2, len(keep) - 1):
        assert reid.paths[j] == adapter.records[keep[j]].path and reid.pids[j] == labels[keep[j]]
        assert np.array_equal(reid.image(j), read_image(adapter.records[keep[j]].path))


@pytest.mark.parametrize("setting", ["on", "off"])
def test_adapt_fine_tunes_under_bf16_autocast_with_float32_embeddings_and_weights(trained_small, site, tmp_path,
                                                                                 setting):
    """cpu_bf16 as in training: the fine-tuning forward (re-ID and the gender head) in bfloat16 with the
    one-column convolutions guarded; the clustering embeddings, the weights and adapted.pt stay float32."""
    from edgereid.training.adapt import Adapter, AdaptConfig

    adapter = Adapter(trained_small["out"] / "last.pt", site["crops"], tmp_path / setting,
                      AdaptConfig(cameras_from_names=True, progress=False, max_rounds=1, minutes=0, round_steps=3,
                                  p=8, k=4, cpu_bf16=setting))
    assert adapter.bf16 is (setting == "on")
    guarded = [m for m in adapter.model.modules() if "forward" in vars(m)]  # training/bf16.py's guard
    assert bool(guarded) is (setting == "on")
    seen: dict = {}

    def record(name):
        # keyed by whether gradients flow: only the fine-tuning steps compute them (AdaBN's pass is train-mode too)
        return lambda module, inputs, output: seen.setdefault((name, torch.is_grad_enabled()), set()).add(output.dtype)

    # a stride-1 convolution of the fine-tuned stage (never guarded: its output is as wide as its input)
    adapter.model.backbone.layer4[-1].conv2.register_forward_hook(record("layer4"))
    adapter.model.gender_head.register_forward_hook(
        lambda module, inputs, output: seen.setdefault("gender", set()).add(output["gender_logit"].dtype))
    result = adapter.run()
    assert result["step"] == 3 and np.isfinite(list(result["history"][1]["losses"].values())).all()
    low = torch.bfloat16 if setting == "on" else torch.float32
    assert seen[("layer4", True)] == {low}  # fine-tuning steps
    assert seen[("layer4", False)] == {torch.float32}  # AdaBN and the embeddings for clustering
    assert low in seen["gender"]  # the gender head's fine-tuning forward
    state = torch.load(tmp_path / setting / "adapted.pt", weights_only=True)["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
