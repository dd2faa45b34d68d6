"""`edgereid parity`: passes for a faithful export, fails (exit 1) for a damaged one; metrics vs hand checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("edgereid.training.synthetic")


@pytest.fixture(scope="module")
def setup(reference_model, tmp_path_factory):
    from onnx import numpy_helper

    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import save_checkpoint
    from edgereid.training.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("parity")
    data = generate_synthetic(root / "data", num_ids=8, images_per_id_per_cam=2, num_cameras=2, gender_images=8,
                              image_size=(64, 32), num_distractors=2, num_junk=1, seed=2, progress=False)
    ckpt = save_checkpoint(root / "model.pt", reference_model)
    good = export_onnx(reference_model, root / "model.onnx", simplify=False)
    # damage: flip the sign of the first conv's weights of layer3 (a plausible broken export / bad weight load)
    proto = onnx.load(str(good))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv" and "layer3" in n.name)
    init = next(i for i in proto.graph.initializer if i.name == conv.input[1])
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    bad = root / "damaged.onnx"
    onnx.save(proto, str(bad))
    return {"root": root, "data": data["reid_root"], "ckpt": ckpt, "good": good, "bad": bad}


def _cli(args):
    from edgereid.cli.main import main

    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_parity_passes_for_faithful_export_and_fails_for_damaged(setup, capsys):
    out = setup["root"] / "report.json"
    code = _cli(["parity", str(setup["ckpt"]), str(setup["good"]), "--data", str(setup["data"]), "--json", str(out)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 0, text
    report = json.loads(out.read_text())
    m = report["models"]["model.onnx"]
    assert report["passed"] and m["precision"] == "fp32"
    assert "int8_kernels" in report["machine"] and report["machine"]["logical_cores"] >= 1  # who checked
    assert m["metrics"]["cosine_min"] > 0.9999 and m["metrics"]["rank1_delta"] == 0.0
    assert m["metrics"]["top10_overlap"] == 1.0

    code = _cli(["parity", str(setup["ckpt"]), str(setup["bad"]), "--data", str(setup["data"]), "--json", str(out)])
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 1, text
    assert "FAIL" in text
    report = json.loads(out.read_text())
    checks = report["models"]["damaged.onnx"]["checks"]
    assert not report["passed"] and not checks["cosine_min"]["pass"] and not checks["embedding_max_abs"]["pass"]


def test_compare_metrics_against_hand_computed_values():
    from edgereid.calibration.parity import EvalSet, compare, judge

    # 2 queries, 3 gallery items; ids/cams so that each query has exactly one valid match
    ev = EvalSet(["q0", "q1"], ["g0", "g1", "g2"], np.array([1, 2]), np.array([1, 2, 3]), np.array([0, 0]),
                 np.array([1, 1, 1]))
    e = np.eye(5, 4, dtype=np.float32)  # q0=e0, q1=e1, g0=e2, g1=e3, g2=0 -> make the matches explicit
    e = np.array([[1, 0, 0], [0, 1, 0], [1, 0.1, 0], [0, 1, 0.1], [0, 0, 1]], dtype=np.float32)
    ref = {"embedding": e, "gender_logit": np.array([1.0, -1.0, 2.0, -2.0, 0.5], dtype=np.float32)}
    got_emb = e.copy()
    got_emb[0] = [0, 1, 0]  # query 0 now looks like identity 2: its rank-1 is lost
    got = {"embedding": got_emb, "gender_logit": np.array([1.0, 1.0, 2.0, -2.0, 0.25], dtype=np.float32)}
    m = compare(ref, got, ev)
    assert m["rank1"] == 0.5 and m["rank1_delta"] == 0.5
    assert m["cosine_min"] == pytest.approx(0.0) and m["cosine_mean"] == pytest.approx(0.8)
    assert m["gender_agreement"] == pytest.approx(0.8)  # one of five logits changed sign
    assert m["gender_logit_max_abs"] == pytest.approx(2.0) and m["embedding_max_abs"] == pytest.approx(1.0)
    checks = judge(m, "int8")
    assert not checks["rank1_delta"]["pass"] and not checks["gender_agreement"]["pass"]
    assert judge({k: 0.0 if "delta" in k or "abs" in k else 1.0 for k in m}, "int8")["cosine_min"]["pass"]
    # Budgets are inclusive, also where float division lands a hair above: 3 of 300 queries = 1 point.
    at_budget = {**m, "rank1_delta": abs(244 / 300 - 241 / 300)}
    assert at_budget["rank1_delta"] > 0.01 and judge(at_budget, "int8")["rank1_delta"]["pass"]
    assert not judge({**m, "rank1_delta": 4 / 300}, "int8")["rank1_delta"]["pass"]


def test_calibration_images_are_excluded_from_evaluation(setup, tmp_path):
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.parity import load_eval_set
    from edgereid.metadata import ModelMetadata

    full = load_eval_set(setup["data"])
    used = full.gallery[:3] + full.query[:1]
    calib = build_calibration_set(used, ModelMetadata(height=16, width=8), tmp_path / "c", num=10, progress=False)
    ev = load_eval_set(setup["data"], exclude=calib.manifest.images)
    assert ev.excluded == 4 and not set(used) & set(ev.paths)
    assert len(ev.paths) == len(full.paths) - 4 and len(ev.q_pids) == len(ev.query)
