"""CameraCentring: per-camera means removed at run time, the file that carries them, and `edgereid fit-cameras`."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgereid import CameraCentring, InvalidInputError, ModelFileError
from edgereid.retrieval.camera_centring import centre_per_camera
from edgereid.retrieval.distances import l2_normalize


def camera_biased(n_ids: int = 40, views: int = 3, cams: int = 3, bias: float = 2.0, seed: int = 0):
    """Unit embeddings of n_ids people seen `views` times on each camera, each camera adding its own offset
    (stronger than the spread between people): (embeddings, person ids, camera ids)."""
    rng = np.random.default_rng(seed)
    people = rng.standard_normal((n_ids, 32))
    offsets = bias * rng.standard_normal((cams, 32))
    pid = np.repeat(np.arange(n_ids), views * cams)
    cam = np.tile(np.repeat(np.arange(cams), views), n_ids)
    x = people[pid] + offsets[cam] + 0.5 * rng.standard_normal((len(pid), 32))
    return l2_normalize(x.astype(np.float32)), pid, cam


def cross_camera_rank1(emb, pid, cam) -> float:
    d = -emb @ emb.T
    d[cam[:, None] == cam[None, :]] = np.inf  # only other cameras' crops count
    return float((pid[d.argmin(1)] == pid).mean())


def test_centring_takes_the_cameras_out_of_cross_camera_search():
    emb, pid, cam = camera_biased()
    centring = CameraCentring.fit(emb, cam)
    centred = centring(emb, cam)
    np.testing.assert_allclose(np.linalg.norm(centred, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(centred, centre_per_camera(emb, cam), atol=1e-6)  # fitted on the same crops
    assert cross_camera_rank1(emb, pid, cam) < 0.6 and cross_camera_rank1(centred, pid, cam) > 0.95


def test_camera_names_and_one_camera_for_all_rows():
    emb, _, cam = camera_biased(n_ids=10)
    centring = CameraCentring.fit(emb, [f"0{c + 1}" for c in cam])  # "01" is camera 1, as c1 / cam1 names say
    assert centring.cameras == ["1", "2", "3"]
    rows = cam == 1
    np.testing.assert_array_equal(centring(emb[rows], 2), centring(emb[rows], np.full(rows.sum(), 2)))
    np.testing.assert_array_equal(centring(emb[rows], "02"), centring(emb[rows], 2))
    with pytest.raises(InvalidInputError, match="3 entries for 4 embeddings"):
        centring(emb[:4], [1, 2, 3])
    with pytest.raises(InvalidInputError, match=r"\(N, 32\)"):
        centring(emb[:, :16], 1)


def test_an_unknown_camera_takes_the_site_mean_unless_strict():
    emb, _, cam = camera_biased(n_ids=10)
    centring = CameraCentring.fit(emb, cam)
    np.testing.assert_allclose(centring(emb[:5], 9), l2_normalize(emb[:5] - emb.mean(axis=0)), atol=1e-5)
    centring.strict = True
    with pytest.raises(InvalidInputError, match="camera.* 9 are not in this camera centring"):
        centring(emb[:5], 9)


def test_a_camera_with_too_few_crops_is_refused():
    emb, _, cam = camera_biased(n_ids=10)
    cams = cam.astype(str)
    cams[:3] = "7"
    with pytest.raises(InvalidInputError, match=r"cameras 7 \(3\) have fewer than 10 crops"):
        CameraCentring.fit(emb, cams)


def test_the_file_round_trips_and_binds_the_model(tmp_path):
    from edgereid.metadata import ModelMetadata

    emb, _, cam = camera_biased(n_ids=10)
    meta = ModelMetadata(weights_sha256="ab" * 32)
    centring = CameraCentring.fit(emb, cam, model="ab" * 32)
    path = tmp_path / "cameras.json"
    centring.save(path)
    back = CameraCentring.load(path, model=meta)
    assert back.cameras == centring.cameras and back.counts == centring.counts
    np.testing.assert_allclose(back(emb, cam), centring(emb, cam), atol=1e-6)
    with pytest.raises(ModelFileError, match="fitted on the model with weights abababab"):
        CameraCentring.load(path, model=meta.with_(weights_sha256="cd" * 32))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format="something-else"), "not a camera centring file"),
    (lambda d: d.update(format_version=99), "upgrade edgereid"),
    (lambda d: d["cameras"]["0"].update(mean=[0.0] * 5), "do not match the file's dim 32"),
    (lambda d: d["cameras"]["0"].update(mean=[float("nan")] * 32), "not finite"),
    (lambda d: d["cameras"]["0"].pop("mean"), "damaged camera centring file"),
])
def test_a_file_that_contradicts_itself_is_refused(tmp_path, edit, message):
    emb, _, cam = camera_biased(n_ids=10)
    data = CameraCentring.fit(emb, cam).to_dict()
    edit(data)
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match=message):
        CameraCentring.load(path)
    with pytest.raises(ModelFileError, match="no such camera centring file"):
        CameraCentring.load(tmp_path / "missing.json")


def test_fit_cameras_cli_writes_the_means_of_the_model_it_runs(model_files, tmp_path):
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.runtime import Runtime
    from tests.conftest import make_crops

    site = tmp_path / "site"
    (site / "day2").mkdir(parents=True)
    paths = []
    for i, crop in enumerate(make_crops(24, seed=4)):
        path = site / ("day2" if i % 2 else "") / f"{i:04d}_c{i % 2 + 1}s1_{i:06d}.jpg"
        cv2.imwrite(str(path), crop)
        paths.append(path)
    out = tmp_path / "cameras.json"
    args = ["fit-cameras", str(model_files["onnx"]), "--images", str(site), "-o", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "2 cameras (1: 12, 2: 12 crops)" in result.output
    with Runtime(model_files["onnx"]) as rt:
        centring = CameraCentring.load(out, model=rt)
        emb = rt.infer_files(paths).embeddings
    np.testing.assert_allclose(centring.means["1"], emb[0::2].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(centring.means["2"], emb[1::2].mean(axis=0), atol=1e-5)

    result = CliRunner().invoke(cli, args[:-2] + ["-o", str(tmp_path / "x.json"), "--min-crops", "13"])
    assert result.exit_code != 0 and "fewer than 13 crops" in str(result.exception)
    assert "site crops" not in result.output  # refused before the model ran


def test_eval_centre_cameras_scores_the_centred_embeddings(model_files, small_synthetic, tmp_path):
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.retrieval.metrics import evaluate
    from edgereid.runtime import Runtime

    splits = small_synthetic["splits"]
    root = small_synthetic["root"] / "data" / "market1501"
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(cli, ["eval", str(model_files["onnx"]), str(root), "--centre-cameras",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    with Runtime(model_files["onnx"]) as rt:
        q = rt.infer_files([r.path for r in splits.query]).embeddings
        g = rt.infer_files([r.path for r in splits.gallery]).embeddings
    arr = {f"{s}_{k}": np.array([getattr(r, k) for r in getattr(splits, s)]) for s in ("query", "gallery")
           for k in ("pid", "camid")}
    both = centre_per_camera(np.concatenate([q, g]), np.concatenate([arr["query_camid"], arr["gallery_camid"]]))
    d = ((both[:len(q), None] - both[None, len(q):]) ** 2).sum(-1)
    want = evaluate(d, arr["query_pid"], arr["gallery_pid"], arr["query_camid"], arr["gallery_camid"])
    report = json.loads(out.read_text())
    assert report["centre_cameras"] is True
    assert report["reid"]["mAP"] == pytest.approx(want.mAP, abs=1e-4)
