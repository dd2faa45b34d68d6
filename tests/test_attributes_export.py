"""The attribute head through every stage: ONNX export against PyTorch, FP16 and INT8 files, the Runtime on each
backend, the promise check, metadata round trips, the INT8 plan's scorer, parity, boxmot and tracklets.

The model is the seeded test model (conftest's recipe) with 3 attributes at 64x32 input (fully convolutional with
global pooling, so the same network as at 256x128, 16x cheaper). Tolerances on P(attribute) against the PyTorch
model's sigmoid, measured on this model (64 crops): fp32 2e-7, fp16 1.7e-4, INT8 max 1.4e-2 / mean 3.7e-3
(TensorRT form, min-max on 48 calibration crops) and 8.8e-3 / 3.0e-3 (cpu form).
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from conftest import export_small, make_crops

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

NAMES = ("a", "b", "c")
HW = (64, 32)
FP16_ATOL = 2e-3  # max |dp| (measured 1.7e-4)
INT8_MAX_ATOL, INT8_MEAN_ATOL = 0.05, 0.01  # max / mean |dp| (measured 1.4e-2 / 3.7e-3)
# Any decision whose fp32 probability is further than this from 0.5 must survive quantization (> INT8_MAX_ATOL).
DECISION_MARGIN = 0.05


@pytest.fixture(scope="module")
def attr_model():
    from benchmarks.references import randomize_norm_stats
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = DualHeadReID(input_size=HW, attribute_names=NAMES)
    randomize_norm_stats(model)
    return model.eval()


@pytest.fixture(scope="module")
def files(attr_model, tmp_path_factory):
    """fp32 (export_onnx, verified against torch), fp16, INT8 TensorRT and cpu forms, and the checkpoint."""
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("attributes")
    fp32 = export_onnx(attr_model, root / "m.onnx")
    calib = build_calibration_set(make_crops(48, seed=5), get_metadata(load_onnx(fp32)), root / "calib", num=48,
                                  seed=0, progress=False)
    return {"root": root, "fp32": fp32, "fp16": quantize_fp16(fp32, root / "m.fp16.onnx"), "calib": calib,
            "int8_tensorrt": quantize_int8(fp32, calib, root / "m.int8.trt.onnx", method="minmax", target="tensorrt"),
            "int8_cpu": quantize_int8(fp32, calib, root / "m.int8.cpu.onnx", method="minmax", target="cpu"),
            "checkpoint": save_checkpoint(root / "m.pt", attr_model)}


@pytest.fixture(scope="module")
def crops():
    return make_crops(24, seed=9)


@pytest.fixture(scope="module")
def torch_probs(attr_model, files, crops):
    """P(attribute) of the PyTorch model on the Runtime's own preprocessing of `crops` (the independent reference)."""
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.runtime.preprocess import Preprocessor

    x = Preprocessor(get_metadata(load_onnx(files["fp32"]))).prepare(crops)
    with torch.no_grad():
        out = attr_model(torch.from_numpy(x))
    return {"attributes": torch.sigmoid(out["attribute_logits"]).numpy(),
            "gender": torch.sigmoid(out["gender_logit"]).numpy().reshape(-1), "x": x}


def test_export_has_the_third_output_and_matches_torch(files, attr_model, torch_probs):
    import onnxruntime as ort

    from edgereid.export.metadata import get_metadata, load_onnx

    proto = load_onnx(files["fp32"])
    assert [o.name for o in proto.graph.output] == ["embedding", "gender_logit", "attribute_logits"]
    meta = get_metadata(proto)
    assert meta.attribute_output == "attribute_logits" and meta.attribute_names == NAMES
    assert meta.output_names == ("embedding", "gender_logit", "attribute_logits")
    x = torch_probs["x"][:5]  # a batch size the export never saw: the batch axis is dynamic
    sess = ort.InferenceSession(str(files["fp32"]), providers=["CPUExecutionProvider"])
    got = dict(zip(meta.output_names, sess.run(list(meta.output_names), {"images": x})))
    with torch.no_grad():
        want = attr_model(torch.from_numpy(x))
    assert got["attribute_logits"].shape == (5, 3) and got["attribute_logits"].dtype == np.float32
    for name in meta.output_names:
        np.testing.assert_allclose(got[name], want[name].numpy(), atol=1e-4)


def test_attributes_on_the_embedding_read_the_float_embedding_in_every_file(files, tmp_path):
    """attribute_tap="embedding": the attribute Gemm reads the graph's `embedding` output, in the fp32 file and in
    both INT8 forms (the L2 normalisation's output is not quantized), so an INT8 file's attribute logits are its
    own embedding times the float layer: its attribute decisions move only as far as its embedding does."""
    import onnxruntime as ort

    from benchmarks.references import randomize_norm_stats
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = DualHeadReID(input_size=HW, attribute_names=NAMES, attribute_tap="embedding")
    randomize_norm_stats(model)
    model.eval()
    fp32 = export_onnx(model, tmp_path / "e.onnx")  # verified against torch on export
    w, b = (t.detach().numpy() for t in (model.attribute_linear.weight, model.attribute_linear.bias))
    for target in (None, "cpu", "tensorrt"):
        path = fp32 if target is None else quantize_int8(fp32, files["calib"], tmp_path / f"e.{target}.onnx",
                                                         method="minmax", target=target)
        proto = load_onnx(path)
        gemm = next(n for n in proto.graph.node if "attribute_logits" in n.output)
        assert gemm.op_type == "Gemm" and gemm.input[0] == "embedding"
        x = Preprocessor(get_metadata(proto)).prepare(make_crops(6, seed=3))
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        emb, logits = sess.run(["embedding", "attribute_logits"], {"images": x})
        np.testing.assert_allclose(logits, emb @ w.T + b, atol=1e-5)
    if importlib.util.find_spec("openvino") is not None:  # an output that feeds another node survives the IR too
        from edgereid import Runtime
        from edgereid.backends.openvino_convert import convert_to_openvino

        crops = make_crops(6, seed=3)
        with Runtime(convert_to_openvino(fp32, tmp_path / "e.xml"), backend="openvino") as rt:
            out = rt.infer(crops)
        np.testing.assert_allclose(out.attributes, 1 / (1 + np.exp(-(out.embeddings @ w.T + b))), atol=1e-5)


def test_model_without_attributes_exports_two_outputs(model_files):
    from edgereid.export.metadata import get_metadata, load_onnx

    proto = load_onnx(model_files["onnx"])
    assert [o.name for o in proto.graph.output] == ["embedding", "gender_logit"]
    meta = get_metadata(proto)
    assert meta.attribute_output == "" and meta.attribute_names == () and not meta.has_attributes


@pytest.mark.parametrize("kind", ["fp16", "int8_tensorrt", "int8_cpu"])
def test_quantized_files_carry_the_attribute_output(files, kind):
    from edgereid.export.metadata import get_metadata, load_onnx

    proto = load_onnx(files[kind])
    outputs = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert list(outputs)[0] == "embedding"
    assert outputs["attribute_logits"] == onnx.TensorProto.FLOAT  # graph outputs stay fp32 in every file
    meta = get_metadata(proto)
    assert meta.attribute_names == NAMES and meta.precision == kind.split("_")[0]
    if kind.startswith("int8"):
        # the heads' Gemm/MatMul stay fp32: no DequantizeLinear feeds them
        producers = {o: n for n in proto.graph.node for o in n.output}
        heads = [n for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
        assert heads and all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                             for n in heads for i in n.input[1:])


@pytest.mark.parametrize("kind,atol", [("fp32", 1e-5), ("fp16", FP16_ATOL), ("int8_tensorrt", INT8_MAX_ATOL),
                                       ("int8_cpu", INT8_MAX_ATOL), ("checkpoint", 1e-5)])
def test_runtime_attributes_match_torch_sigmoid(files, crops, torch_probs, kind, atol):
    from edgereid import Runtime

    with Runtime.for_checking(files[kind]) as rt:
        assert rt.attribute_names == NAMES
        out = rt.infer(crops)
    want = torch_probs["attributes"]
    assert out.attributes.shape == (len(crops), 3) and out.attributes.dtype == np.float32
    assert out.attribute_names == NAMES
    err = np.abs(out.attributes - want)
    assert err.max() <= atol, (kind, err.max())
    if kind.startswith("int8"):
        assert err.mean() <= INT8_MEAN_ATOL, (kind, err.mean())
    sure = np.abs(want - 0.5) > DECISION_MARGIN
    assert ((out.attributes >= 0.5) == (want >= 0.5))[sure].all()


def test_openvino_reads_the_attribute_output_and_keeps_it_in_ir(files, crops, torch_probs, tmp_path):
    pytest.importorskip("openvino")
    from edgereid import Runtime
    from edgereid.backends.openvino_convert import convert_to_openvino

    xml = convert_to_openvino(files["fp32"], tmp_path / "m.xml")
    for path in (files["fp32"], xml):
        with Runtime(path, backend="openvino") as rt:
            assert rt.attribute_names == NAMES
            out = rt.infer(crops)
        np.testing.assert_allclose(out.attributes, torch_probs["attributes"], atol=1e-4)


def test_output_concat_index_records_and_skip_carry_attributes(files, crops):
    from edgereid import Runtime

    with Runtime(files["fp32"], max_batch=5) as rt:  # 5 batches: concat joins them
        whole = rt.infer(crops)
        bad = list(crops[:4])
        bad[1] = np.zeros((0, 0, 3), np.uint8)
        skipped = rt.infer(bad, on_error="skip")
        raw = rt.infer_raw(crops[:3])
    assert list(skipped.indices) == [0, 2, 3] and 1 in skipped.failed
    np.testing.assert_allclose(skipped.attributes, whole.attributes[[0, 2, 3]], atol=1e-6)
    sub = whole[2:4]
    assert sub.attributes.shape == (2, 3) and sub.attribute_names == NAMES
    record = whole.to_records(["x"] + [str(i) for i in range(1, len(crops))])[0]
    assert list(record["attributes"]) == list(NAMES)
    assert record["attributes"]["b"] == pytest.approx(float(whole.attributes[0, 1]))
    # infer_raw returns the logits by name; their sigmoid is Output.attributes
    np.testing.assert_allclose(1 / (1 + np.exp(-raw["attribute_logits"])), whole.attributes[:3], atol=1e-6)


def test_runtime_without_attributes_says_none(model_files, crops):
    from edgereid import Runtime
    from edgereid.runtime.output import Output

    for key in ("onnx", "checkpoint"):
        with Runtime(model_files[key]) as rt:
            assert rt.attribute_names == ()
            out = rt.infer(crops[:3])
            assert out.attributes is None and out.attribute_names == ()
            assert "attributes" not in out.to_records()[0] and out[0:2].attributes is None
    assert Output.concat([], 128).attributes is None
    assert Output.concat([], 128, attribute_names=NAMES).attributes.shape == (0, 3)


def test_promise_check_refuses_three_names_over_two_columns(attr_model, tmp_path, crops):
    from edgereid import Runtime
    from edgereid.errors import ModelFileError
    from edgereid.export.metadata import get_metadata, load_onnx, write_metadata
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(1)
    two = DualHeadReID(input_size=HW, attribute_names=("a", "b")).eval()
    path = export_small(two, tmp_path / "two.onnx", *HW)
    lying = write_metadata(path, get_metadata(load_onnx(path)).with_attributes(NAMES), tmp_path / "lying.onnx")
    with Runtime(lying) as rt, pytest.raises(ModelFileError, match=r"3 attributes.*\(2, 2\)"):
        rt.infer(crops[:2])


def test_metadata_round_trips_and_old_files_read_as_no_attributes(tmp_path):
    from edgereid.backends.tensorrt_engine import make_sidecar, read_sidecar, sidecar_metadata, write_sidecar
    from edgereid.errors import ModelFileError
    from edgereid.metadata import PREFIX, ModelMetadata

    meta = ModelMetadata().with_attributes(NAMES)
    assert ModelMetadata.from_props(meta.to_props()) == meta
    assert ModelMetadata.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert json.loads(meta.to_props()[PREFIX + "output_names"])[-1] == "attribute_logits"
    engine = tmp_path / "m.engine"
    write_sidecar(engine, make_sidecar(meta, "10.3.0", "GPU", (8, 7), {}, "fp16"))
    assert sidecar_metadata(read_sidecar(engine)).attribute_names == NAMES
    # a file written before the head existed carries neither field
    old = {k: v for k, v in ModelMetadata().to_props().items() if "attribute" not in k}
    old[PREFIX + "output_names"] = json.dumps(["embedding", "gender_logit"])
    legacy = ModelMetadata.from_props(old)
    assert legacy.attribute_names == () and legacy.output_names == ("embedding", "gender_logit")
    assert ModelMetadata().with_attributes(()) == ModelMetadata()
    with pytest.raises(ModelFileError, match="attribute"):
        ModelMetadata(attribute_output="attribute_logits")  # a head without names


def test_int8_scorer_scores_attributes(files):
    from edgereid.calibration.int8 import Int8Quantizer
    from edgereid.calibration.sensitivity import Scorer, meets, shortfall

    with Int8Quantizer(files["fp32"], files["calib"], target="tensorrt") as q:
        scorer = Scorer(q, max_images=48)
        same = scorer.score(q.model)
        int8 = scorer.score(q.quantize(q.ranges("minmax")))
    assert same["attribute_agreement"] == 1.0 and same["attribute_prob_diff"] == pytest.approx(0.0, abs=1e-6)
    assert 0.9 <= int8["attribute_agreement"] <= 1.0 and 0 < int8["attribute_prob_diff"] < INT8_MEAN_ATOL
    # the target needs both: cosine alone is not enough when attribute decisions flip
    assert not meets({"cosine_mean": 0.999, "attribute_agreement": 0.98}, 0.995, 0.99)
    assert meets({"cosine_mean": 0.999, "attribute_agreement": 0.99}, 0.995, 0.99)
    assert meets({"cosine_mean": 0.999}, 0.995, 0.99)  # no attribute head: the cosine alone, as before
    # gaps in units of each budget: 0.001 of cosine (budget 0.005) is 0.2, 0.005 of agreement (budget 0.01) 0.5
    assert shortfall({"cosine_mean": 0.994, "attribute_agreement": 0.985}, 0.995, 0.99) == pytest.approx(0.7)


def test_parity_reports_attribute_agreement_and_mA(files, tmp_path):
    import cv2

    from edgereid.calibration.parity import attribute_mean_accuracy, attribute_metrics, judge, run_parity
    from edgereid.training.synthetic import generate_synthetic

    # mA by hand: attribute 0 TPR 1/2, TNR 1 -> 0.75; attribute 1 TPR 1, TNR 1/2 -> 0.75; attribute 2 has no
    # negative label (-1 unknown) and is left out
    probs = np.array([[0.9, 0.8, 0.7], [0.2, 0.6, 0.1], [0.1, 0.3, 0.9]])
    labels = np.array([[1, 1, 1], [1, 0, -1], [0, 0, 1]])
    assert attribute_mean_accuracy(probs, labels) == pytest.approx(0.75)

    data = generate_synthetic(tmp_path / "data", num_ids=6, images_per_id_per_cam=2, num_cameras=2, gender_images=4,
                              image_size=HW, num_distractors=2, num_junk=1, seed=2, progress=False)
    rng = np.random.default_rng(3)
    rows = ["image,female," + ",".join(NAMES)]
    for i, crop in enumerate(make_crops(12, seed=4)):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), crop)
        rows.append(f"p{i}.png,{i % 2}," + ",".join(str(v) for v in rng.integers(0, 2, 3)))
    (tmp_path / "attrs.csv").write_text("\n".join(rows) + "\n")
    report = run_parity(files["checkpoint"], [files["fp32"], files["int8_tensorrt"]], data["reid_root"],
                        attributes_data=tmp_path / "attrs.csv")
    fp32 = report.models["m.onnx"]
    assert fp32["metrics"]["attribute_agreement"] == 1.0 and fp32["metrics"]["attribute_mA_delta"] <= 1e-9
    assert fp32["checks"]["attribute_agreement"]["pass"] and fp32["checks"]["attribute_mA_delta"]["pass"]
    int8 = report.models["m.int8.trt.onnx"]["metrics"]
    assert 0.9 <= int8["attribute_agreement"] <= 1.0 and "attribute_mA" in int8
    assert "attribute_agreement" in report.table() and 0 <= report.reference["attribute_mA"] <= 1

    # a file that lost the head fails the agreement check; a reference without a head has no attribute checks
    ev_like = {"embedding": np.eye(3, dtype=np.float32), "gender_logit": np.zeros(3, np.float32)}
    ref = {**ev_like, "attribute_logits": np.zeros((3, 3), np.float32), "attribute_names": NAMES}
    assert attribute_metrics(ref, {**ev_like, "attribute_logits": None, "attribute_names": ()}) == {
        "attribute_agreement": 0.0, "attribute_names_match": False}
    assert attribute_metrics(ev_like, ref) == {}
    checks = judge({"attribute_agreement": 0.0, **{k: 0.0 for k in ("embedding_max_abs", "gender_logit_max_abs",
                                                                        "rank1_delta", "mAP_delta")},
                    **{k: 1.0 for k in ("cosine_min", "cosine_mean", "gender_agreement", "top10_overlap")}}, "int8")
    assert not checks["attribute_agreement"]["pass"] and "attribute_mA_delta" not in checks


def test_infer_cli_writes_attribute_probabilities(files, crops, tmp_path):
    import cv2

    from edgereid.cli.main import main

    paths = []
    for i, crop in enumerate(crops[:3]):
        paths.append(tmp_path / f"c{i}.png")
        cv2.imwrite(str(paths[-1]), crop)
    try:
        main(["infer", str(files["fp32"]), *map(str, paths), "--json", str(tmp_path / "o.json"),
              "--csv", str(tmp_path / "o.csv")])
    except SystemExit as exc:
        assert not exc.code
    data = json.loads((tmp_path / "o.json").read_text())
    assert data["attribute_names"] == list(NAMES) and set(data["results"][0]["attributes"]) == set(NAMES)
    header, first = (tmp_path / "o.csv").read_text().splitlines()[:2]
    assert header == "name,gender,gender_prob,a,b,c"
    assert float(first.split(",")[3]) == pytest.approx(data["results"][0]["attributes"]["a"], abs=1e-5)


def test_appearance_model_keeps_last_attributes_with_nan_for_empty_boxes(files):
    from edgereid import Runtime
    from edgereid.integrations.boxmot import AppearanceModel

    frame = make_crops(1, seed=7, min_hw=(200, 300), max_hw=(201, 301))[0]
    boxes = np.array([[10, 10, 60, 150], [500, 500, 600, 600], [100, 20, 180, 190]], np.float64)  # middle: outside
    with Runtime(files["fp32"]) as rt:
        app = AppearanceModel(rt)
        app.get_features(boxes, frame)
        want = rt.infer([frame[10:150, 10:60], frame[20:190, 100:180]]).attributes
    assert app.attribute_names == NAMES and app.last_attributes.shape == (3, 3)
    assert np.isnan(app.last_attributes[1]).all() and np.isnan(app.last_gender_prob[1])
    np.testing.assert_allclose(app.last_attributes[[0, 2]], want, atol=1e-6)


def test_appearance_model_without_attributes_has_none(model_files):
    from edgereid.integrations.boxmot import AppearanceModel

    frame = make_crops(1, seed=7, min_hw=(200, 300), max_hw=(201, 301))[0]
    with AppearanceModel(model_files["onnx"]) as app:
        app.get_features(np.array([[10, 10, 60, 150]]), frame)
        assert app.last_attributes is None and app.attribute_names == ()


def test_tracklets_average_attributes_over_crops_like_gender():
    from edgereid.errors import InvalidInputError
    from edgereid.integrations.tracklets import Tracklet, TrackletBuilder

    emb = np.eye(3, 4, dtype=np.float32)
    builder = TrackletBuilder(camera=0, max_gap=0)
    builder.add(0, [7, 8, -1], emb, [0.2, 0.9, 0.5], np.zeros((3, 4)),
                attributes=np.array([[0.1, 0.9], [0.5, 0.5], [0.0, 0.0]], np.float32))
    builder.add(1, [7, 8], emb[:2], [0.4, np.nan], np.zeros((2, 4)),
                attributes=np.array([[0.3, 0.7], [np.nan, np.nan]], np.float32))  # track 8: an empty box
    done = {t.track: t for t in builder.close_all()}
    np.testing.assert_allclose(done[7].attribute_probs, [0.2, 0.8])  # (0.1 + 0.3) / 2, (0.9 + 0.7) / 2
    np.testing.assert_allclose(done[8].attribute_probs, [0.5, 0.5])  # the NaN row is left out, as gender's NaN
    assert done[7].gender_prob == pytest.approx(0.3) and done[8].gender_prob == pytest.approx(0.9)
    plain = Tracklet(0, 1)
    plain.add(0, emb[0], 0.5, (0, 0, 1, 1))
    assert plain.attribute_probs is None  # a model without attributes
    with pytest.raises(InvalidInputError, match="attribute rows"):
        builder.add(2, [7], emb[:1], [0.5], np.zeros((1, 4)), attributes=np.zeros((2, 2)))


def test_dynamic_batcher_item_results_carry_attributes(files, crops):
    from edgereid import DynamicBatcher, Runtime

    with Runtime(files["fp32"]) as rt:
        want = rt.infer(crops[:3]).attributes
        with DynamicBatcher(rt, max_latency_ms=1.0) as batcher:
            results = [f.result() for f in [batcher.submit(c) for c in crops[:3]]]
    assert [list(r.attributes) for r in results] == [list(NAMES)] * 3
    np.testing.assert_allclose([[r.attributes[n] for n in NAMES] for r in results], want, atol=1e-6)
