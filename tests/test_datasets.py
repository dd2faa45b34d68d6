"""Data-set readers on fixture folders built in each layout: ids, cameras, junk/distractors, relabelling, errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgereid.errors import DatasetError
from edgereid.datasets import (
    load_attribute_table, load_dukemtmc, load_folder, load_gender_dataset, load_gender_list, load_market1501,
    load_msmt17, load_reid_dataset,
)

JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")  # readers never decode pixels


def touch(folder: Path, *names: str) -> Path:
    """Files of these names (a tiny JPEG each) in `folder`; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(JPEG)
    return folder


def make_market(root: Path) -> Path:
    """A tiny Market-1501 copy: ids 2 and 7 train; 3 and 9 test; junk -1 and distractors 0 where the benchmark has them."""
    touch(root / "bounding_box_train", "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
          "0007_c3s1_000100_00.jpg", "0007_c6s2_000200_00.jpg", "-1_c1s1_000001_00.jpg", "0000_c1s1_000002_00.jpg")
    touch(root / "query", "0003_c1s1_000010_00.jpg", "0009_c4s1_000020_00.jpg", "-1_c2s1_000003_00.jpg")
    touch(root / "bounding_box_test", "0003_c1s1_000011_00.jpg", "0003_c5s1_000012_00.jpg",
          "0009_c2s1_000021_00.jpg", "0000_c3s1_000030_00.jpg", "0000_c6s1_000031_00.jpg", "-1_c2s1_000032_00.jpg")
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # ships in the real zip
    touch(root / "gt_bbox", "0003_c1s1_000010_00.jpg")
    return root


def test_market_ids_cameras_junk_and_distractors(tmp_path):
    s = load_market1501(make_market(tmp_path / "m"))
    # Train: junk and distractors dropped, pids 2 and 7 relabelled to 0 and 1 in sorted order, originals kept.
    assert sorted((Path(r.path).name, r.pid, r.orig_pid, r.camid) for r in s.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 2, 0), ("0002_c2s1_000551_01.jpg", 0, 2, 1),
        ("0007_c3s1_000100_00.jpg", 1, 7, 2), ("0007_c6s2_000200_00.jpg", 1, 7, 5)]
    assert s.num_train_pids == 2 and s.num_train_cams == 4
    # Query: original pids, junk dropped.  Gallery: distractors (0) kept, junk and Thumbs.db dropped.
    assert sorted(zip(s.pids("query").tolist(), s.camids("query").tolist())) == [(3, 0), (9, 3)]
    assert sorted(zip(s.pids("gallery").tolist(), s.camids("gallery").tolist())) == [
        (0, 2), (0, 5), (3, 0), (3, 4), (9, 1)]
    assert all(r.pid == r.orig_pid for r in s.query + s.gallery)
    assert {r.split for r in s.gallery} == {"gallery"} and s.extra == []
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in s.paths("gallery"))
    assert s.summary()["gallery"] == {"images": 5, "ids": 3, "cameras": 5}


def test_market_found_in_unzipped_subfolder_and_gt_bbox(tmp_path):
    make_market(tmp_path / "Market-1501-v15.09.15")
    s = load_market1501(tmp_path, use_gt_bbox=True)
    assert Path(s.root).name == "Market-1501-v15.09.15"
    assert [(r.pid, r.camid, r.split) for r in s.extra] == [(3, 0, "extra")]
    assert load_reid_dataset("Market-1501", tmp_path).summary() == load_market1501(tmp_path).summary()


@pytest.mark.parametrize("mutate, message", [
    (lambda r: __import__("shutil").rmtree(r / "query"), "query"),
    (lambda r: touch(r / "bounding_box_test", "img_001.jpg"), "img_001.jpg"),
    (lambda r: touch(r / "bounding_box_train", "0002_c7s1_000001_00.jpg"), "0002_c7s1_000001_00.jpg"),
    (lambda r: [p.unlink() for p in (r / "query").iterdir()], "query split is empty"),
    (lambda r: [p.unlink() for p in (r / "bounding_box_train").iterdir()], "train split is empty"),
])
def test_market_errors_name_the_problem(tmp_path, mutate, message):
    root = make_market(tmp_path / "m")
    mutate(root)
    with pytest.raises(DatasetError, match=message):
        load_market1501(root)


def test_market_missing_root_and_no_matching_query(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_market1501(tmp_path / "nowhere")
    root = make_market(tmp_path / "m")
    for p in (root / "query").iterdir():
        p.unlink()
    touch(root / "query", "0042_c1s1_000001_00.jpg")  # an identity absent from the gallery
    with pytest.raises(DatasetError, match="no query identity"):
        load_market1501(root)


def test_dukemtmc_eight_cameras(tmp_path):
    root = tmp_path / "DukeMTMC-reID"
    touch(root / "bounding_box_train", "0001_c2_f0046182.jpg", "0001_c8_f0050000.jpg", "0005_c1_f0000001.jpg")
    touch(root / "query", "0010_c8_f0001000.jpg")
    touch(root / "bounding_box_test", "0010_c3_f0002000.jpg", "0011_c7_f0003000.jpg")
    s = load_dukemtmc(tmp_path)
    assert sorted((r.orig_pid, r.pid, r.camid) for r in s.train) == [(1, 0, 1), (1, 0, 7), (5, 1, 0)]
    assert s.camids("query").tolist() == [7] and s.pids("gallery").tolist() == [10, 11]
    touch(root / "query", "0012_c9_f0000001.jpg")
    with pytest.raises(DatasetError, match="0012_c9"):
        load_reid_dataset("duke", tmp_path)


def make_msmt(root: Path, train_dir="train", test_dir="test") -> Path:
    lists = {
        "list_train.txt": [(train_dir, "0000/0000_000_01_0303morning_0015_0.jpg", 0),
                           (train_dir, "0000/0000_001_05_0303morning_0020_0.jpg", 0),
                           (train_dir, "0004/0004_000_14_0303noon_0100_1.jpg", 4)],
        "list_val.txt": [(train_dir, "0004/0004_001_15_0303noon_0110_0.jpg", 4)],
        "list_query.txt": [(test_dir, "0002/0002_000_03_0303afternoon_0008_0.jpg", 2)],
        "list_gallery.txt": [(test_dir, "0002/0002_003_07_0303afternoon_0050_0.jpg", 2),
                             (test_dir, "0003/0003_000_02_0303afternoon_0060_0.jpg", 3)],
    }
    for name, rows in lists.items():
        for d, rel, _ in rows:
            touch(root / d / Path(rel).parent, Path(rel).name)
        (root / name).write_text("".join(f"{rel} {pid}\n" for _, rel, pid in rows))
    return root


def test_msmt17_lists_cameras_and_val(tmp_path):
    s = load_msmt17(make_msmt(tmp_path / "MSMT17_V1").parent)
    # pids 0 and 4 relabelled to 0 and 1; camera is the third name field, 1-based in names.
    assert sorted((r.orig_pid, r.pid, r.camid) for r in s.train) == [(0, 0, 0), (0, 0, 4), (4, 1, 13), (4, 1, 14)]
    assert s.camids("query").tolist() == [2] and s.camids("gallery").tolist() == [6, 1]
    assert len(load_msmt17(tmp_path / "MSMT17_V1", combine_val=False).train) == 3
    v2 = load_reid_dataset("msmt17", make_msmt(tmp_path / "v2", "mask_train_v2", "mask_test_v2"))
    assert len(v2.train) == 4 and Path(v2.query[0].path).parts[-3] == "mask_test_v2"


def test_msmt17_errors(tmp_path):
    root = make_msmt(tmp_path / "m")
    (root / "list_query.txt").write_text("0002/garbage.jpg 2\n")
    with pytest.raises(DatasetError, match="line 1"):
        load_msmt17(root)
    root = make_msmt(tmp_path / "n")
    (root / "list_gallery.txt").write_text("0002/0002_009_07_0303afternoon_0050_0.jpg 2\n")
    with pytest.raises(DatasetError, match="do not exist"):
        load_msmt17(root)
    (root / "list_train.txt").unlink()
    with pytest.raises(DatasetError, match="list_train.txt"):
        load_msmt17(root)


def make_folder(root: Path, n_ids=10, n_img=6, cams=True) -> Path:
    for i in range(n_ids):
        touch(root / f"person_{i:02d}", *[f"img{k}_cam{k % 3}.jpg" if cams else f"img{k}.jpg" for k in range(n_img)])
    return root


def test_folder_split_is_deterministic_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "f")
    a = load_folder(root, test_id_fraction=0.4, query_fraction=0.25, seed=3)
    b = load_folder(root, test_id_fraction=0.4, query_fraction=0.25, seed=3)
    assert a.paths("query") == b.paths("query") and a.paths("train") == b.paths("train")
    train_ids = {r.orig_pid for r in a.train}
    test_ids = {r.pid for r in a.query}
    assert len(train_ids) == 6 and len(test_ids) == 4 and not train_ids & test_ids
    assert sorted({r.pid for r in a.train}) == list(range(6))
    # Every test id: round(6 * 0.25) = 2 queries and 4 gallery images, no image in both.
    for pid in test_ids:
        assert (a.pids("query") == pid).sum() == 2 and (a.pids("gallery") == pid).sum() == 4
    assert not set(a.paths("query")) & set(a.paths("gallery"))
    assert {Path(p).name for p in a.paths("train")} == {f"img{k}_cam{k % 3}.jpg" for k in range(6)}
    assert all(r.camid == int(Path(r.path).stem[-1]) for r in a.train + a.query + a.gallery)
    seeds = {tuple(sorted({r.pid for r in load_folder(root, seed=s).query})) for s in range(6)}
    assert len(seeds) > 1  # the seed really chooses the split


def test_folder_without_cameras_and_with_train_test(tmp_path):
    s = load_folder(make_folder(tmp_path / "f", cams=False), seed=0)
    assert set(s.camids("query").tolist()) == {0} and set(s.camids("gallery").tolist()) == {1}
    root = tmp_path / "tt"
    make_folder(root / "train", n_ids=3)
    for pid in ("0010", "0011"):
        touch(root / "test" / pid, "a_c1.jpg", "b_c2.jpg", "c_c3.jpg", "d_c1.jpg")
    s = load_reid_dataset("folder", root)
    assert s.num_train_pids == 3 and sorted(set(s.pids("query").tolist())) == [10, 11]
    with pytest.raises(DatasetError, match="at least 2"):
        load_folder(make_folder(tmp_path / "one", n_ids=1))


def test_gender_list_formats_and_relative_paths(tmp_path):
    touch(tmp_path / "imgs", "a.jpg", "b.jpg", "c d.jpg", "e.jpg", "f.jpg")
    (tmp_path / "g.csv").write_text("path,label\nimgs/a.jpg,1\nimgs/b.jpg,0\nimgs/e.jpg,female\n"
                                    "imgs/f.jpg,M\n# a comment\n\n")
    recs = load_gender_list(tmp_path / "g.csv")
    assert [(Path(r.path).name, r.label) for r in recs] == [("a.jpg", 1), ("b.jpg", 0), ("e.jpg", 1), ("f.jpg", 0)]
    assert Path(recs[0].path) == (tmp_path / "imgs" / "a.jpg").resolve()
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "g.txt").write_text("c d.jpg F\na.jpg 0.0\n")
    recs = load_gender_list(tmp_path / "lists" / "g.txt", image_root=tmp_path / "imgs")
    assert [(Path(r.path).name, r.label) for r in recs] == [("c d.jpg", 1), ("a.jpg", 0)]


def test_gender_list_errors(tmp_path):
    touch(tmp_path, "a.jpg")
    (tmp_path / "bad.csv").write_text("a.jpg,1\na.jpg,unknown\n")
    with pytest.raises(DatasetError, match="line 2"):
        load_gender_list(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("a.jpg,1\nnope.jpg,0\n")
    with pytest.raises(DatasetError, match="nope.jpg"):
        load_gender_list(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("path,label\n")
    with pytest.raises(DatasetError, match="no labelled images"):
        load_gender_list(tmp_path / "empty.csv")
    with pytest.raises(DatasetError, match="does not exist"):
        load_gender_list(tmp_path / "absent.csv")


def test_attribute_tables_pick_column_by_name_and_invert(tmp_path):
    touch(tmp_path / "img", "1.png", "2.png", "3.png")
    # PA-100K style: a Female column.
    (tmp_path / "pa.csv").write_text("Image,Hat,Female,Backpack\nimg/1.png,1,1,0\nimg/2.png,0,0,1\nimg/3.png,1,1,1\n")
    assert [r.label for r in load_attribute_table(tmp_path / "pa.csv")] == [1, 0, 1]
    # PETA style: personalMale is inverted automatically so 1 always means female.
    (tmp_path / "peta.csv").write_text("filename\tpersonalLess30\tpersonalMale\n1.png\t1\t1\n2.png\t0\t0\n")
    recs = load_attribute_table(tmp_path / "peta.csv", image_root=tmp_path / "img")
    assert [r.label for r in recs] == [0, 1]
    assert [r.label for r in load_attribute_table(tmp_path / "peta.csv", gender_column="personalMale",
                                                  invert=False, image_root=tmp_path / "img")] == [1, 0]
    # RAP spells it "Femal"; the image column is chosen by name too.
    (tmp_path / "rap.csv").write_text("hs-BaldHead,Femal,image_name\n0,1,img/2.png\n0,0,img/1.png\n")
    assert [(Path(r.path).name, r.label) for r in load_gender_dataset(tmp_path / "rap.csv")] == [
        ("2.png", 1), ("1.png", 0)]
    with pytest.raises(DatasetError, match="no column 'Gender'"):
        load_attribute_table(tmp_path / "pa.csv", gender_column="Gender")
    (tmp_path / "x.csv").write_text("Image,Hat\nimg/1.png,1\n")
    with pytest.raises(DatasetError, match="which column"):
        load_attribute_table(tmp_path / "x.csv")


def test_unknown_dataset_and_no_torch_import():
    with pytest.raises(DatasetError, match="market1501"):
        load_reid_dataset("ilids-vid", ".")
    code = ("import sys, edgereid.datasets, edgereid.training.synthetic; "
            "bad = [m for m in ('torch', 'onnx', 'tensorrt') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
