"""Readers for the layouts real public sets come in (CUHK03 flat and NP, VIPeR / PRID / GRID, PETA's Label.txt),
on small generated trees, and the errors that name the folder, file or line at fault."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_datasets import touch

from edgereid.datasets import load_cuhk03, load_gender_dataset, load_peta, load_reid_dataset, load_two_camera
from edgereid.errors import DatasetError


def make_cuhk03_flat(root: Path, n_ids: int = 12) -> Path:
    folder = root / "labeled" / "train"
    # identity i has shots 00..03 (camera A) and 05..07 (camera B), as the real folder's 00-04 / 05-09
    touch(folder, *[f"{i:04d}_{k:02d}.jpg" for i in range(n_ids) for k in (0, 1, 2, 3, 5, 6, 7)])
    return root


def test_cuhk03_flat_holds_out_identities_and_reads_cameras_from_the_shot(tmp_path):
    root = make_cuhk03_flat(tmp_path)
    splits = load_cuhk03(root, val_ids=3, seed=1)  # found under labeled/train
    val = {r.pid for r in splits.query}
    assert len(val) == 3 and not val & {r.orig_pid for r in splits.train}
    assert splits.num_train_pids == 9 and sorted({r.pid for r in splits.train}) == list(range(9))
    assert [r.path for r in splits.query] == [r.path for r in splits.gallery]  # every image is a query
    cams = {(Path(r.path).stem.split("_")[1], r.camid) for r in splits.query}
    assert cams == {("00", 0), ("01", 0), ("02", 0), ("03", 0), ("05", 1), ("06", 1), ("07", 1)}
    again = load_cuhk03(root / "labeled" / "train", val_ids=3, seed=1)
    assert {r.pid for r in again.query} == val  # the split is the seed's, wherever the folder is given
    assert {r.pid for r in load_cuhk03(root, val_ids=3, seed=2).query} != val
    assert load_reid_dataset("cuhk03", root, val_ids=3).num_train_pids == 9


def test_cuhk03_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_cuhk03(tmp_path / "none")
    root = make_cuhk03_flat(tmp_path / "a", n_ids=4)
    with pytest.raises(DatasetError, match="hold out 4 of 4"):
        load_cuhk03(root, val_ids=4)
    touch(root / "labeled" / "train", "0005_12.jpg", "readme_x.jpg")
    with pytest.raises(DatasetError, match=r"0005_12\.jpg.*|readme_x\.jpg"):
        load_cuhk03(root, val_ids=1)


def test_cuhk03_np_market_folders(tmp_path):
    base = tmp_path / "cuhk03-np" / "labeled"
    touch(base / "bounding_box_train", "0001_c1_1.png", "0001_c2_2.png", "0003_c1_1.png", "0003_c2_1.png")
    touch(base / "query", "0010_c1_1.png")
    touch(base / "bounding_box_test", "0010_c2_1.png", "0011_c1_1.png")
    splits = load_cuhk03(tmp_path)
    assert splits.num_train_pids == 2 and [r.camid for r in splits.gallery] == [1, 0]
    touch(base / "query", "0012_c3_1.png")  # CUHK03 has two cameras per identity
    with pytest.raises(DatasetError, match="0012_c3_1.png"):
        load_cuhk03(tmp_path)


def test_viper_prid_and_grid_layouts(tmp_path):
    viper = tmp_path / "VIPeR"
    touch(viper / "cam_a", "000_45.bmp", "001_0.bmp", "002_90.bmp")
    touch(viper / "cam_b", "000_90.bmp", "001_180.bmp")
    v = load_two_camera(viper)
    assert v.name == "viper" and v.train == []
    assert sorted((r.pid, r.camid) for r in v.gallery) == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    prid = touch(tmp_path / "PRID", "0001_a.png", "0001_b.png", "0002_a.png")
    p = load_reid_dataset("prid", prid)
    assert sorted((r.pid, r.camid) for r in p.query) == [(1, 0), (1, 1), (2, 0)]
    grid = touch(tmp_path / "GRID", "0001_1_25004_107_32_106_221.jpeg", "0001_2_25023_116_134_128_330.jpeg",
                 "0000_5_1_2_3_4_5.jpeg")
    g = load_two_camera(grid)
    assert g.name == "grid" and {(r.pid, r.camid) for r in g.query} == {(1, 0), (1, 1)}
    assert len(g.gallery) == 3  # id 0000 is an unpaired distractor: gallery only
    prid_folders = tmp_path / "prid2011"
    touch(prid_folders / "cam_a", "person_0001.png")
    touch(prid_folders / "cam_b", "person_0001.png", "person_0002.png")
    assert {(r.pid, r.camid) for r in load_two_camera(prid_folders, "prid").gallery} == {(1, 0), (1, 1), (2, 1)}


def test_two_camera_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a two-camera layout"):
        load_two_camera(touch(tmp_path / "x", "a.jpg", "b.jpg"))
    bad = touch(tmp_path / "prid", "0001_a.png", "0001_b.png", "0002_c.png")
    with pytest.raises(DatasetError, match="0002_c.png"):
        load_two_camera(bad, "prid")
    with pytest.raises(DatasetError, match="unknown two-camera layout"):
        load_two_camera(bad, "market")
    lonely = touch(tmp_path / "one", "0001_a.png", "0002_b.png")
    with pytest.raises(DatasetError, match="cam_b does not exist"):
        load_two_camera(touch(tmp_path / "empty" / "cam_a").parent, "viper")
    assert len(load_two_camera(lonely).query) == 2


def make_peta(root: Path) -> Path:
    a = touch(root / "3DPeS" / "archive", "100_3_FRAME_26_RGB.bmp", "100_4_FRAME_70_RGB.bmp", "7_1_FRAME_1_RGB.bmp",
              "9_1_FRAME_2_RGB.bmp")
    (a / "Label.txt").write_text("100 upperBodyBlue personalMale hairShort\n007 personalFemale hairLong\n")
    c = touch(root / "CUHK" / "archive", "0606.png", "0607.png")
    (c / "Label.txt").write_text("0606.png personalLess30 personalMale\n0607.png personalFemale\n")
    m = touch(root / "MIT" / "archive", "00001_male_back.jpg", "00002_male_front.jpg")
    (m / "Label.txt").write_text("00001 personalMale\n00002 personalMale\n00003 upperBodyRed\n")
    return root


def test_peta_label_files_as_a_gender_source(tmp_path):
    root = make_peta(tmp_path / "PETA dataset")
    recs = load_peta(root, subsets=["3DPeS"])
    # leading numbers match the ids whatever their zero-padding; id 9 has no line and is left out
    assert sorted((Path(r.path).name, r.label) for r in recs) == [
        ("100_3_FRAME_26_RGB.bmp", 0), ("100_4_FRAME_70_RGB.bmp", 0), ("7_1_FRAME_1_RGB.bmp", 1)]
    assert sorted((Path(r.path).name, r.label) for r in load_peta(root / "CUHK")) == [("0606.png", 0),
                                                                                    ("0607.png", 1)]
    # each record names its person (subset and id), so a sampler can weigh people rather than frames
    assert sorted({r.person for r in recs}) == ["3DPeS/100", "3DPeS/7"]
    assert {r.person for r in load_peta(root / "CUHK")} == {"CUHK/0606.png", "CUHK/0607.png"}
    with pytest.warns(UserWarning, match="line"):  # MIT's id 00003 has no gender word
        everything = load_peta(root, exclude=["cuhk"])
    assert len(everything) == 5
    with pytest.warns(UserWarning):
        assert len(load_gender_dataset(root, subsets=["MIT", "CUHK"])) == 4  # a folder: PETA
    with pytest.warns(UserWarning):
        assert len(load_gender_dataset(root / "MIT" / "archive")) == 2
    with pytest.raises(DatasetError, match="is a file"):  # subsets name parts of a PETA folder only
        load_gender_dataset(root / "MIT" / "archive" / "Label.txt", subsets=["MIT"])


def test_peta_errors_name_the_file_and_line(tmp_path):
    root = make_peta(tmp_path / "PETA")
    with pytest.raises(DatasetError, match=r"\['VIPeR'\] are not under"):
        load_peta(root, subsets=["VIPeR"])
    with pytest.raises(DatasetError, match="no PETA subset"):
        load_peta(touch(tmp_path / "empty"))
    (root / "3DPeS" / "archive" / "Label.txt").write_text("100 personalMale\n7 personalFemale personalMale\n")
    with pytest.raises(DatasetError, match=r"3DPeS/archive/Label.txt line 2: id '7'"):
        load_peta(root, subsets=["3DPeS"])
    (root / "3DPeS" / "archive" / "Label.txt").write_text("abc personalMale\n")
    with pytest.raises(DatasetError, match="line 1: id 'abc'"):
        load_peta(root, subsets=["3DPeS"])
    (root / "3DPeS" / "archive" / "Label.txt").write_text("555 personalMale\n")
    with pytest.raises(DatasetError, match="none of its 4 images"):
        load_peta(root, subsets=["3DPeS"])
