"""Calibration sets: sampling, shards + manifest round trip, the reader contract, preprocessing refusal."""
from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_crops
from edgereid.calibration.calibset import CalibrationSet, build_calibration_set, sample_indices
from edgereid.datasets.calibration_set import CalibrationManifest
from edgereid.errors import DatasetError
from edgereid.metadata import ModelMetadata
from edgereid.runtime.preprocess import Preprocessor

META = ModelMetadata(height=32, width=16)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    import cv2

    root = tmp_path_factory.mktemp("imgs")
    for i, crop in enumerate(make_crops(12, seed=3, max_hw=(80, 40))):
        sub = root / f"{i % 3}"
        sub.mkdir(exist_ok=True)
        cv2.imwrite(str(sub / f"{i:03d}.png"), crop)
    return root


def test_folder_set_roundtrips_and_matches_preprocessor(image_folder, tmp_path):
    calib = build_calibration_set(image_folder, META, tmp_path / "calib", num=10, seed=1, shard_size=4,
                                  progress=False)
    again = CalibrationSet.load(tmp_path / "calib")
    assert again.manifest == calib.manifest
    m = again.manifest
    assert m.count == 10 and [s["count"] for s in m.shards] == [4, 4, 2]
    assert m.shape == [3, 32, 16] and m.dtype == "float32"
    assert m.preprocessing_hash == META.preprocessing_hash()
    assert len(set(m.images)) == 10
    # each stored sample is exactly what the runtime's Preprocessor makes of that file (PNG is lossless)
    import cv2

    expected = Preprocessor(META).prepare([cv2.imread(p) for p in m.images])
    np.testing.assert_array_equal(again.array(), expected)
    # the manifest JSON is plain data and parses back to an equal object
    data = json.loads((tmp_path / "calib" / "manifest.json").read_text())
    assert CalibrationManifest.from_dict(data) == m


def test_other_preprocessing_is_refused(image_folder, tmp_path):
    calib = build_calibration_set(image_folder, META, tmp_path / "c", num=4, progress=False)
    calib.check_compatible(META)  # same preprocessing: accepted
    for other in (META.with_(interpolation="cubic"), META.with_(mean=(0.5, 0.5, 0.5)),
                  META.with_(height=64), META.with_(color_order="BGR")):
        with pytest.raises(DatasetError, match="preprocessed differently"):
            calib.check_compatible(other)


def test_reader_contract_streams_every_sample_once(tmp_path):
    crops = make_crops(11, seed=4, max_hw=(60, 30))
    calib = build_calibration_set(crops, META, tmp_path / "c", num=11, shard_size=3, progress=False)
    reader = calib.reader(batch_size=4)
    assert len(reader) == 3  # ceil(11 / 4)
    got = []
    while (feed := reader.get_next()) is not None:
        assert list(feed) == [META.input_name]
        got.append(feed[META.input_name])
    assert [len(b) for b in got] == [4, 4, 3]  # batches cross shard boundaries (3, 3, 3, 2)
    np.testing.assert_array_equal(np.concatenate(got), Preprocessor(META).prepare(crops))
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()[META.input_name], got[0])


def test_stratified_sampling_covers_identities_and_cameras():
    # 5 identities x 2 cameras, very unbalanced: 40 images of (0, 0), 1 of every other pair
    keys = [(0, 0)] * 40 + [(p, c) for p in range(5) for c in range(2) if (p, c) != (0, 0)]
    picked = sample_indices(keys, 10, seed=0)
    assert len(picked) == len(set(picked)) == 10
    assert Counter(keys[i] for i in picked) == Counter({k: 1 for k in set(keys)})  # one of each pair
    assert sample_indices(keys, 10, seed=0) == picked  # seeded


def test_records_record_stratification(tmp_path, image_folder):
    paths = sorted(str(p) for p in image_folder.rglob("*.png"))
    records = [SimpleNamespace(path=p, pid=i % 4, camid=i % 2) for i, p in enumerate(paths)]
    calib = build_calibration_set(records, META, tmp_path / "c", num=4, progress=False)
    assert calib.manifest.stratified_by == ["pid", "camid"]
    pairs = {(r.pid, r.camid) for r in records if r.path in calib.manifest.images}
    assert len(pairs) == 4


def test_missing_or_foreign_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no manifest.json"):
        CalibrationSet.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="not an edgereid calibration manifest"):
        CalibrationSet.load(tmp_path)
