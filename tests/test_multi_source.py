"""Several re-ID sources in one run: layouts detected or named, one label space with each source's identities
and cameras kept apart, PETA's re-ID subsets as a source, balanced P x K batches, per-source validation."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_TRAIN as SMALL, real_layout_copy
from edgereid.datasets.peta_reid import load_peta_reid
from edgereid.datasets.sources import combine_sources, detect_layout, load_source, parse_spec
from edgereid.errors import DatasetError


@pytest.fixture(scope="module")
def two_layouts(tmp_path_factory):
    """A Market-1501 folder (generated people) and other generated people in CUHK03's flat and PETA's layouts."""
    from edgereid.training.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("sources")
    market = generate_synthetic(root / "a", num_ids=24, images_per_id_per_cam=2, num_cameras=3, gender_images=120,
                                image_size=(64, 32), num_distractors=2, num_junk=1, seed=21, progress=False)
    generate_synthetic(root / "b", num_ids=20, images_per_id_per_cam=3, num_cameras=2, gender_images=60,
                       image_size=(64, 32), num_distractors=0, num_junk=0, seed=22, progress=False)
    cuhk, _ = real_layout_copy(root / "b", root / "real")
    third = generate_synthetic(root / "c", num_ids=12, images_per_id_per_cam=2, num_cameras=2, gender_images=20,
                               image_size=(64, 32), num_distractors=0, num_junk=0, seed=23, progress=False)
    return {"market": Path(market["reid_root"]), "cuhk": cuhk / "labeled" / "train",
            "peta": _peta_copy(third["reid_root"], root / "PETA dataset"), "gender_more": third["gender_train_csv"],
            "gender_train": market["gender_train_csv"], "gender_test": market["gender_test_csv"]}


def _peta_copy(market_root, dest):
    """Generated people as a PETA re-ID subset: `TownCentre/archive/<id>_<n>.jpg` and a Label.txt line per id."""
    from edgereid.datasets import load_market1501

    splits = load_market1501(market_root)
    folder = dest / "TownCentre" / "archive"
    folder.mkdir(parents=True)
    ids = set()
    for n, r in enumerate(splits.train + splits.query + splits.gallery):
        if r.orig_pid > 0:
            (folder / f"{r.orig_pid}_{n}.jpg").write_bytes(Path(r.path).read_bytes())
            ids.add(r.orig_pid)
    (folder / "Label.txt").write_text("".join(f"{i} personalMale\n" for i in sorted(ids)))
    return dest


def _peta_reid_tree(root):
    """Two PETA re-ID subsets; person 5 exists in both (two different people), person 9 has one crop only (not
    a re-ID identity)."""
    import cv2

    img = np.full((32, 16, 3), 128, np.uint8)
    names = {"3DPeS": ["5_1_FRAME_1_RGB.bmp", "5_2_FRAME_9_RGB.bmp", "7_1_FRAME_2_RGB.bmp", "7_3_FRAME_4_RGB.bmp",
                       "9_1_FRAME_5_RGB.bmp"],
             "TownCentre": ["5_100.jpg", "5_101.jpg", "5_102.jpg", "8_7.jpg", "8_9.jpg"]}
    for subset, files in names.items():
        folder = root / subset / "archive"
        folder.mkdir(parents=True)
        for f in files:
            cv2.imwrite(str(folder / f), img)
        (folder / "Label.txt").write_text("5 personalMale\n7 personalFemale\n8 personalMale\n9 personalMale\n")
    return root


def test_peta_reid_keeps_subsets_apart(tmp_path):
    splits = load_peta_reid(_peta_reid_tree(tmp_path / "PETA dataset"), subsets=["3DPeS", "TownCentre"])
    assert not splits.query and not splits.gallery  # a training source only
    by_person = Counter((r.orig_pid, r.camid) for r in splits.train)
    # 3DPeS persons 5 and 7 (person 9 has one crop: dropped) on camera 0; TownCentre's on its own camera 1, and
    # its person 5 is not 3DPeS's person 5
    assert by_person == {(5, 0): 2, (7, 0): 2, (100_005, 1): 3, (100_008, 1): 2}
    assert splits.num_train_pids == 4 and sorted({r.pid for r in splits.train}) == [0, 1, 2, 3]
    assert detect_layout(tmp_path / "PETA dataset") == "peta"
    with pytest.raises(DatasetError, match="not under"):
        load_peta_reid(tmp_path / "PETA dataset", subsets=["CAVIAR4REID"])
    # a two-camera subset (PRID) given where PETA's re-ID subsets were expected: the error names the reader to use
    prid = tmp_path / "PETA dataset" / "PRID" / "archive"
    prid.mkdir(parents=True)
    (prid / "Label.txt").write_text("1 personalMale\n")
    with pytest.raises(DatasetError, match=r"holds PRID\..*--dataset two_camera on the subset's folder, e\.g\. .*PRID"):
        load_peta_reid(prid.parent)
    assert detect_layout(prid) == "two_camera"  # the subset's own image folder: auto detection reads it so
    assert detect_layout(prid.parent) == "peta"  # its parent holds archive/: the error above says where to point


def test_layouts_are_detected_or_named(two_layouts, tmp_path):
    assert detect_layout(two_layouts["market"]) == "market1501"
    assert detect_layout(two_layouts["cuhk"]) == "cuhk03"
    assert parse_spec(f"cuhk03={two_layouts['cuhk']}") == ("cuhk03", str(two_layouts["cuhk"]))
    assert parse_spec(str(two_layouts["market"]), "auto") == ("auto", str(two_layouts["market"]))
    assert parse_spec("market=/x") == ("market1501", "/x")  # aliases allowed
    with pytest.raises(DatasetError, match="unknown re-ID data set"):
        parse_spec("marketplace=/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="LAYOUT=PATH"):
        detect_layout(tmp_path / "empty")
    # a Market layout holding only its training folder is a valid training source
    only_train = tmp_path / "train_only"
    (only_train / "bounding_box_train").mkdir(parents=True)
    for p in sorted((two_layouts["market"] / "bounding_box_train").iterdir())[:12]:
        (only_train / "bounding_box_train" / p.name).write_bytes(p.read_bytes())
    splits = load_source(str(only_train))
    assert splits.name == "market1501" and splits.train and not splits.query


def test_combined_sources_keep_identities_and_cameras_apart(two_layouts):
    a = load_source(str(two_layouts["market"]))
    b = load_source(f"cuhk03={two_layouts['cuhk']}", options={"cuhk03": {"val_ids": 6}})
    both = combine_sources([a, b])
    assert both.num_train_pids == a.num_train_pids + b.num_train_pids  # no two sources share a label
    assert sorted({r.pid for r in both.train}) == list(range(both.num_train_pids))
    for split in ("train", "query", "gallery"):
        cams = {s: {r.camid for r in getattr(both, split) if r.source == s} for s in ("market1501", "cuhk03")}
        assert cams["market1501"] and cams["cuhk03"] and not cams["market1501"] & cams["cuhk03"], split
        ids = {s: {r.pid for r in getattr(both, split) if r.source == s} for s in ("market1501", "cuhk03")}
        assert not ids["market1501"] & ids["cuhk03"], split
    assert Counter(r.source for r in both.train) == {"market1501": len(a.train), "cuhk03": len(b.train)}
    # the same layout twice gets two names
    assert {r.source for r in combine_sources([a, a]).train} == {"market1501", "market1501#2"}


@pytest.mark.parametrize("balance, share_small", [(0.0, 0.1), (1.0, 0.5), (0.5, 0.25)])
def test_source_balance_holds_in_the_sampled_batches(balance, share_small):
    """Source "s" has 10 identities, "l" 90: a slot goes to "s" with probability 10^(1-b) / (10^(1-b) +
    90^(1-b)): 0.1 at b = 0, 0.5 at b = 1, 0.25 at b = 0.5."""
    from edgereid.training.samplers import PKSampler

    labels = np.repeat(np.arange(100), 4)
    groups = ["s" if label < 10 else "l" for label in labels]
    sampler = PKSampler(labels, p=8, k=4, seed=0, groups=groups, balance=balance)
    assert len(sampler) == 100 // 8
    seen = []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        for batch in sampler:
            ids = [int(labels[i]) for i in batch[::4]]
            assert len(batch) == 32 and len(set(ids)) == 8  # P distinct identities, K images each
            assert all(len({int(labels[i]) for i in batch[j:j + 4]}) == 1 for j in range(0, 32, 4))
            seen += ids
    share = np.mean(np.array(seen) < 10)
    expected = 10 ** (1 - balance) / (10 ** (1 - balance) + 90 ** (1 - balance))
    assert expected == pytest.approx(share_small, abs=0.005)
    assert share == pytest.approx(expected, abs=0.03), share


def test_train_cli_trains_on_two_sources_and_scores_each(two_layouts, tmp_path):
    from click.testing import CliRunner

    from edgereid.cli.main import cli

    out = tmp_path / "run"
    settings = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL.items()
                if k not in ("device",)]
    result = CliRunner().invoke(cli, ["train", "--reid-data", str(two_layouts["market"]),
                                      "--reid-data", f"cuhk03={two_layouts['cuhk']}",
                                      "--reid-data", f"peta={two_layouts['peta']}",
                                      "--gender-data", str(two_layouts["gender_train"]),
                                      "--gender-data", str(two_layouts["gender_more"]),
                                      "--gender-test-data", str(two_layouts["gender_test"]),
                                      "--out", str(out), "--epochs", "1", "--stage2-epochs", "0", "--device", "cpu",
                                      "--set", "reid_source_balance=1", "--set", "reid_p=4", "--set", "reid_val_ids=6",
                                      *settings, "--set", "eval_every=1", "--set", "gender_sampling=subsets"])
    assert result.exit_code == 0, result.output
    assert "market1501+cuhk03+peta" in result.output
    config = (out / "config.yaml").read_text()
    assert "reid_sources:" in config and "gender_sources:" in config and "gender_sampling: subsets" in config
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    # CUHK03's flat folder holds out reid_val_ids identities for validation; PETA has no query split: not scored
    assert {"reid:market1501", "reid:cuhk03"} <= set(record) and "reid:peta" not in record, record
    mean = np.mean([record[f"reid:{s}"]["mAP"] for s in ("market1501", "cuhk03")])
    assert record["reid"]["mAP"] == pytest.approx(mean)


def test_subset_sampling_weighs_each_subset_then_people_and_classes():
    """900 frames of 30 people in one subset, 100 photos of 100 people in another: each subset draws half,
    and within each subset both classes draw half of it."""
    from edgereid.training.samplers import BalancedBatchSampler
    from edgereid.training.trainer import gender_subset

    persons = [f"0:TownCentre/{i % 30}" for i in range(900)] + [f"1:#{i}" for i in range(100)]
    labels = [int(i % 30 < 10) for i in range(900)] + [int(i < 20) for i in range(100)]
    groups = [gender_subset(p) for p in persons]
    assert groups[0] == "0:TownCentre" and groups[-1] == "1"
    sampler = BalancedBatchSampler(labels, persons, batch_size=50, seed=0, groups=groups)
    w = sampler.weights
    big, y = np.arange(1000) < 900, np.asarray(labels)
    assert w[big].sum() == pytest.approx(0.5) and w[~big].sum() == pytest.approx(0.5)
    for part in (big, ~big):
        assert w[part & (y == 1)].sum() == pytest.approx(0.25)
    draws = np.concatenate([b for b in sampler])
    assert np.mean(draws < 900) == pytest.approx(0.5, abs=0.08)
