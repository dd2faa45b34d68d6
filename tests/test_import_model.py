"""`edgereid import-model`: a foreign single-output re-ID network (a small torch conv net exported here, with and
without its own L2 normalisation, RGB and BGR) becomes an edgereid model that every stage takes: outputs equal to
running the foreign file on its own preprocessing done by hand, calibration in the model's colour order, INT8 with
the plan, parity fp32 vs INT8 without a checkpoint (and failing against another network), Runtime (gender and
attributes None), a gallery, boxmot's appearance model, bench, OpenVINO (converted and imported IR) and
build-engine with a fake TensorRT; and the errors that name what was found."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import cv2  # noqa: E402

from conftest import make_crops  # noqa: E402
from edgereid import Runtime  # noqa: E402
from edgereid.errors import InvalidInputError, ModelFileError  # noqa: E402
from edgereid.export.import_model import import_model  # noqa: E402

# the foreign networks are exported with torch's TorchScript exporter, as most re-ID code still does
pytestmark = pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")

H, W, DIM = 64, 32, 24
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ARGS = ["--input", f"{H}x{W}", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


class Foreign(torch.nn.Module):
    """A small re-ID-shaped conv net (conv, BN, pooling, a linear embedding). Its first conv reads channel 0 four
    times as strongly as the others, so feeding it the wrong colour order changes its embedding."""

    def __init__(self, normalize: bool = False, heads: bool = False, channels: int = 3) -> None:
        super().__init__()
        self.normalize, self.heads = normalize, heads
        first = torch.nn.Conv2d(channels, 16, 3, padding=1)
        with torch.no_grad():
            first.weight[:, 0] *= 4.0
        self.body = torch.nn.Sequential(
            first, torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, DIM))
        self.classifier = torch.nn.Linear(DIM, 7)

    def forward(self, x):
        e = self.body(x)
        if self.normalize:
            e = torch.nn.functional.normalize(e, dim=1)
        return (e, self.classifier(e)) if self.heads else e


def export_foreign(path: Path, seed: int = 0, dynamic: bool = True, height: int = H, width: int = W, **kw) -> Path:
    """The network as its owner would export it: input "input", output "feat" (+ "logits"), opset 17."""
    torch.manual_seed(seed)
    net = Foreign(**kw).eval()
    with torch.no_grad():  # eval-mode BatchNorm with statistics of its own, as a trained network has
        net.body[1].running_mean.uniform_(-0.2, 0.2)
        net.body[1].running_var.uniform_(0.5, 2.0)
    outputs = ["feat", "logits"] if kw.get("heads") else ["feat"]
    dyn = {n: {0: "batch"} for n in ["input", *outputs]} if dynamic else None
    torch.onnx.export(net, (torch.randn(1, kw.get("channels", 3), height, width),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=outputs, dynamic_axes=dyn)
    return path


def cli(args: list) -> tuple:
    """(exit code, output) of `edgereid ARGS` through the real entry point."""
    from click.testing import CliRunner

    from edgereid.cli.main import main

    def run():
        try:
            main(args)
        except SystemExit as exc:
            return exc.code or 0
        return 0

    with CliRunner().isolation() as streams:  # click >= 8.2: (stdout, stderr, both interleaved)
        code = run()
        text = streams[-1].getvalue().decode() if len(streams) == 3 else "".join(
            s.getvalue().decode() for s in streams if s is not None)
    return code, text


def by_hand(foreign: Path, crops: list, color: str, normalize: bool) -> np.ndarray:
    """The foreign file run on its own preprocessing, written out here: OpenCV linear resize, channel order,
    x / 255, (x - mean) / std, NCHW; then L2 when the network does not normalise."""
    rows = []
    for crop in crops:
        x = cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR)
        x = x[..., ::-1] if color == "rgb" else x  # crops are BGR (OpenCV)
        x = (x.astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
        rows.append(x.transpose(2, 0, 1))
    sess = ort.InferenceSession(str(foreign), providers=["CPUExecutionProvider"])
    emb = np.concatenate([sess.run(["feat"], {"input": r[None].astype(np.float32)})[0] for r in rows])
    return emb / np.linalg.norm(emb, axis=1, keepdims=True) if normalize else emb


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Foreign files and their imports: RGB without L2 (fixed batch 1), RGB with its own L2, BGR without L2, and
    another network (other weights) for parity to catch."""
    root = tmp_path_factory.mktemp("import")
    f = {"rgb": export_foreign(root / "rgb.onnx", dynamic=False),
         "norm": export_foreign(root / "norm.onnx", seed=1, normalize=True),
         "bgr": export_foreign(root / "bgr.onnx", seed=2),
         "other": export_foreign(root / "other.onnx", seed=3)}
    color = {"rgb": "rgb", "norm": "rgb", "bgr": "bgr", "other": "rgb"}
    out = {"root": root, "foreign": f}
    for name, path in f.items():
        code, text = cli(["import-model", str(path), "-o", str(root / f"{name}.edgereid.onnx"), *ARGS,
                          "--color", color[name]])
        assert code == 0, text
        out[name] = root / f"{name}.edgereid.onnx"
    out["text"] = text
    return out


def test_the_imported_file_carries_the_contract(nets):
    from edgereid.export.metadata import get_metadata, load_onnx

    for name, added in (("rgb", True), ("norm", False)):
        proto = load_onnx(nets[name])
        meta = get_metadata(proto)
        assert meta.origin == "imported" and meta.origin_file == f"{name}.onnx"
        assert meta.origin_sha256 == hashlib.sha256(nets["foreign"][name].read_bytes()).hexdigest()
        assert meta.output_names == ("embedding",) and meta.gender_output == "" and not meta.has_attributes
        assert meta.format_version == 2  # a version-1 reader would look for a gender output: it is told to upgrade
        assert (meta.input_name, meta.height, meta.width, meta.color_order) == ("input", H, W, "RGB")
        assert meta.mean == MEAN and meta.std == STD and meta.embedding_dim == DIM and meta.embedding_normalized
        assert [o.name for o in proto.graph.output] == ["embedding"]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        ops = [n.op_type for n in proto.graph.node if n.name.startswith("edgereid_l2/")]
        assert ops == (["ReduceL2", "Clip", "Div"] if added else [])
        assert meta.extra["import"]["normalization"] == ("added" if added else "own")
        names = [n.name for n in proto.graph.node]
        assert all(names) and len(set(names)) == len(names)
    assert get_metadata(load_onnx(nets["rgb"])).extra["import"]["batch_made_dynamic"] is True
    # files with a gender head keep format 1, so an older edgereid keeps reading them
    from edgereid.metadata import ModelMetadata

    assert ModelMetadata().format_version == 1 and ModelMetadata().to_props()["edgereid.format_version"] == "1"


@pytest.mark.parametrize("name, color, normalize", [("rgb", "rgb", False), ("norm", "rgb", True),
                                                     ("bgr", "bgr", False)])
def test_runtime_equals_the_foreign_file_on_its_own_preprocessing(nets, name, color, normalize):
    crops = make_crops(5, seed=3, max_hw=(150, 80))
    want = by_hand(nets["foreign"][name], crops, color, normalize=not normalize)
    with Runtime(nets[name], max_batch=2) as rt:  # batches of 2, 2, 1 through the dynamic batch
        out = rt.infer(crops)
        raw = rt.infer_raw(crops)
    assert out.gender_prob is None and out.attributes is None and out.gender_labels is None
    assert list(raw) == ["embedding"]
    np.testing.assert_allclose(out.embeddings, want, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    assert out.to_records()[0]["gender"] is None


def test_colour_order_matters_and_bgr_gets_bgr_everywhere(nets, tmp_path):
    from edgereid.calibration.int8_policy import DEFAULT_POLICY, calibrate

    crops = make_crops(6, seed=5, max_hw=(150, 80))
    as_rgb = tmp_path / "bgr_as_rgb.onnx"
    import_model(nets["foreign"]["bgr"], as_rgb, f"{H}x{W}", MEAN, STD, "rgb")
    with Runtime(nets["bgr"]) as right, Runtime(as_rgb) as wrong:
        a, b = right.infer(crops).embeddings, wrong.infer(crops).embeddings
        expected_calib = right.preprocessor.prepare(crops)
    assert (a * b).sum(1).mean() < 0.99  # the network is sensitive to the order: the BGR import is what matters
    # the calibration set is preprocessed in the model's colour order (BGR), exactly as the runtime feeds it
    calib = calibrate(nets["bgr"], crops, tmp_path / "calib", DEFAULT_POLICY.with_(num_calibration=6),
                      progress=False)
    got = calib.array()
    order = [int(p.split(":")[1].rstrip(">")) for p in calib.manifest.images]
    np.testing.assert_allclose(got, expected_calib[order], atol=1e-6)
    hand = (cv2.resize(crops[order[0]], (W, H)).astype(np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_allclose(got[0], hand.transpose(2, 0, 1), atol=1e-5)  # no channel swap for BGR


def test_mean_std_in_0_255_units_mean_the_same(nets, tmp_path):
    from edgereid.export.metadata import get_metadata, load_onnx

    code, text = cli(["import-model", str(nets["foreign"]["norm"]), "-o", str(tmp_path / "m.onnx"), "--input",
                      f"{H}x{W}", "--mean", "123.675,116.28,103.53", "--std", "58.395,57.12,57.375", "--units",
                      "0-255", "--color", "rgb"])
    assert code == 0, text
    a, b = (get_metadata(load_onnx(p)) for p in (tmp_path / "m.onnx", nets["norm"]))
    np.testing.assert_allclose(a.mean, MEAN) and np.testing.assert_allclose(a.std, STD)
    assert a.preprocessing_hash() == b.preprocessing_hash()


@pytest.fixture(scope="module")
def pipeline(nets):
    """calibrate -> quantize --int8 (the plan) on generated Market-1501-layout crops."""
    from edgereid.training.synthetic import generate_synthetic

    root = nets["root"]
    data = generate_synthetic(root / "data", num_ids=24, images_per_id_per_cam=2, num_cameras=2, gender_images=8,
                              image_size=(H, W), num_distractors=2, num_junk=1, seed=4, progress=False)
    reid = Path(data["reid_root"])
    code, text = cli(["calibrate", str(nets["rgb"]), "--images", str(reid / "bounding_box_train"), "--num", "32",
                      "-o", str(root / "calib")])
    assert code == 0, text
    int8 = root / "rgb.int8.onnx"
    code, text = cli(["quantize", str(nets["rgb"]), "--int8", "--calib", str(root / "calib"), "-o", str(int8)])
    assert code == 0, text
    return {"reid": reid, "calib": root / "calib", "int8": int8, "quantize_text": text}


def test_int8_with_the_plan_keeps_the_contract_and_replays(nets, pipeline, tmp_path):
    from edgereid.export.metadata import get_metadata, load_onnx

    int8 = pipeline["int8"]
    meta = get_metadata(load_onnx(int8))
    assert meta.precision == "int8" and meta.origin == "imported" and meta.output_names == ("embedding",)
    assert "int8_plan" in meta.extra and "plan:" in pipeline["quantize_text"]
    assert "gender" not in pipeline["quantize_text"]  # scored on the embedding alone
    plan_file = int8.with_name("rgb.int8.plan.json")
    assert json.loads(plan_file.read_text())["calibration_score"]["cosine_mean"] >= 0.995
    assert any(n.op_type == "DequantizeLinear" for n in load_onnx(int8).graph.node)
    replay = tmp_path / "replay.onnx"
    code, text = cli(["quantize", str(nets["rgb"]), "--int8", "--calib", str(pipeline["calib"]), "--plan",
                      str(plan_file), "-o", str(replay)])
    assert code == 0, text
    assert replay.read_bytes() == int8.read_bytes()
    code, text = cli(["quantize", str(nets["rgb"]), "--fp16", "-o", str(tmp_path / "m.fp16.onnx")])
    assert code == 0, text
    crops = make_crops(4, seed=9)
    with Runtime(nets["rgb"]) as a, Runtime(tmp_path / "m.fp16.onnx") as b:
        assert ((a.infer(crops).embeddings * b.infer(crops).embeddings).sum(1) > 0.999).all()


def test_parity_between_two_onnx_files_passes_and_fails_when_it_should(nets, pipeline, tmp_path):
    report = tmp_path / "parity.json"
    code, text = cli(["parity", str(nets["rgb"]), str(pipeline["int8"]), "--data", str(pipeline["reid"]),
                      "--calib", str(pipeline["calib"]), "--json", str(report)])
    assert code == 0, text
    data = json.loads(report.read_text())
    checks = data["models"]["rgb.int8.onnx"]["checks"]
    assert data["passed"] and data["excluded_calibration_images"] == 0  # calibrated on the training split
    assert {"cosine_min", "cosine_mean", "rank1_delta", "mAP_delta", "top10_overlap"} <= set(checks)
    assert not any(k.startswith("gender") for k in checks)  # no gender head: no gender check
    assert data["models"]["rgb.int8.onnx"]["metrics"]["embedding_max_abs"] > 1e-4  # quantized for real
    code, text = cli(["parity", str(nets["rgb"]), str(nets["other"]), "--data", str(pipeline["reid"]), "--json",
                      str(report)])
    assert code == 1 and "FAIL" in text, text
    failed = json.loads(report.read_text())["models"]["other.edgereid.onnx"]["checks"]
    assert not failed["cosine_min"]["pass"] and not failed["embedding_max_abs"]["pass"]


def test_gallery_appearance_model_and_tracklets(nets, pipeline):
    from edgereid.integrations.boxmot import AppearanceModel
    from edgereid.integrations.tracklets import TrackletBuilder
    from edgereid.retrieval.gallery import Gallery

    crops = make_crops(8, seed=11, max_hw=(150, 80))
    with Runtime(pipeline["int8"]) as rt:
        out = rt.infer(crops)
        g = Gallery(dim=out.embeddings.shape[1])
        g.add(out.embeddings[1:], ids=list(range(1, 8)), gender_prob=out.gender_prob)
        hits = g.search(out.embeddings[0], k=3)
        want = np.argsort(-(out.embeddings[1:] @ out.embeddings[0]), kind="stable")[:3] + 1
        assert [h.id for h in hits] == want.tolist()
        np.testing.assert_allclose([h.distance for h in hits],
                                   np.linalg.norm(out.embeddings[want] - out.embeddings[0], axis=1), atol=1e-5)
        assert np.isnan(hits[0].gender_prob)  # unknown gender, as for any entry added without one

        frame = make_crops(1, seed=12, min_hw=(120, 100), max_hw=(121, 101))[0]
        boxes = np.array([[0, 0, 30, 60], [10, 20, 70, 110]], np.float64)
        model = AppearanceModel(rt)
        emb = model.get_features(boxes, frame)
        direct = rt.infer([frame[0:60, 0:30], frame[20:110, 10:70]]).embeddings
    np.testing.assert_allclose(emb, direct, atol=1e-6)
    assert model.last_gender_prob is None and model.last_attributes is None and not model.has_gender
    again, gender = model.features_of(boxes, frame)
    assert gender is None and model.calls == 1 and np.array_equal(again, emb)
    closed = TrackletBuilder(camera=0, max_gap=0).add(0, [5, 6], emb, model.last_gender_prob, boxes)
    assert closed == []


def test_boxmot_tracker_runs_on_the_imported_model(nets):
    pytest.importorskip("boxmot", reason="boxmot is not installed (docs/trackers.md)")
    from edgereid.integrations.boxmot import AppearanceModel, make_tracker, track_ids_of_detections

    model = AppearanceModel(nets["norm"])
    tracker = make_tracker("botsort", model)
    frame = np.ascontiguousarray(np.tile(make_crops(1, seed=2, min_hw=(240, 320), max_hw=(241, 321))[0], 1))
    ids = []
    for k in range(4):
        dets = np.array([[20 + 2 * k, 30, 60 + 2 * k, 130, 0.9, 0], [200 - 2 * k, 40, 240 - 2 * k, 150, 0.8, 0]],
                        np.float32)
        ids.append(track_ids_of_detections(tracker.update(dets, frame), 2).tolist())
    assert model.calls == 4 and model.last_gender_prob is None
    assert ids[-1] == ids[-2] and len(set(ids[-1])) == 2, ids  # two people, each keeping its track


def test_bench_cli_on_the_imported_int8_file(pipeline, tmp_path):
    out = tmp_path / "bench.json"
    code, text = cli(["bench", str(pipeline["int8"]), "--batch", "1,4", "--iters", "3", "--warmup", "1",
                      "--no-progress", "--json", str(out)])
    assert code == 0, text
    rows = json.loads(out.read_text())["results"]
    assert [r["batch"] for r in rows] == [1, 4] and all(r["images_per_s"] > 0 for r in rows)
    assert rows[0]["precision"] == "int8"


def test_openvino_converted_and_imported_ir(nets, tmp_path):
    ov = pytest.importorskip("openvino")
    crops = make_crops(5, seed=8, max_hw=(150, 80))
    code, text = cli(["convert-openvino", str(nets["bgr"]), "-o", str(tmp_path / "bgr.xml")])
    assert code == 0 and "outputs embedding;" in text, text
    ir = tmp_path / "foreign.xml"
    ov.save_model(ov.convert_model(str(nets["foreign"]["rgb"])), str(ir), compress_to_fp16=False)
    code, text = cli(["import-model", str(ir), "-o", str(tmp_path / "imported.xml"), *ARGS, "--color", "rgb"])
    assert code == 0 and "L2 normalisation added" in text and "batch made dynamic" in text, text
    for onnx_file, xml in ((nets["bgr"], tmp_path / "bgr.xml"), (nets["rgb"], tmp_path / "imported.xml")):
        with Runtime(onnx_file) as a, Runtime(xml, max_batch=2) as b:
            want, got = a.infer(crops), b.infer(crops)
            assert b.backend_name == "openvino" and got.gender_prob is None
            meta = b.metadata
        np.testing.assert_allclose(got.embeddings, want.embeddings, atol=2e-5)
        assert meta.origin == "imported" and meta.output_names == ("embedding",)
    assert meta.origin_file == "foreign.xml" and meta.extra["import"]["normalization"] == "added"
    code, text = cli(["import-model", str(tmp_path / "imported.xml"), "-o", str(tmp_path / "again.xml"), *ARGS,
                      "--color", "rgb"])
    assert code == 2 and "already carries edgereid metadata" in text


def fake_tensorrt(seen: dict) -> SimpleNamespace:
    """Just enough of TensorRT 10.3's builder API for build_engine (the real one needs a GPU); the parser keeps
    the ONNX graph it was given."""

    class Parser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse(self, data: bytes) -> bool:
            seen["graph"] = onnx.load_from_string(data).graph
            return True

    class Builder:
        num_DLA_cores = 0

        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags):
            seen["network_flags"] = flags
            return object()

        def create_builder_config(self):
            return SimpleNamespace(set_memory_pool_limit=lambda pool, n: None, add_optimization_profile=lambda p: None,
                                   set_flag=lambda f: seen.setdefault("builder_flags", []).append(f))

        def create_optimization_profile(self):
            return SimpleNamespace(set_shape=lambda *shape: seen.setdefault("profile", shape))

        def build_serialized_network(self, network, config) -> bytes:
            return b"fake engine"

    class Logger:
        WARNING = 2

        def __init__(self, level) -> None:
            pass

    return SimpleNamespace(__version__="10.3.0", Logger=Logger, Builder=Builder, OnnxParser=Parser, MemoryPoolType=SimpleNamespace(WORKSPACE="ws"),
                           NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1))


def test_build_engine_sidecar_carries_the_imported_contract(pipeline, tmp_path, monkeypatch):
    from edgereid.backends.tensorrt_engine import read_sidecar, sidecar_metadata
    from edgereid.export import trt_build

    seen: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(seen))
    monkeypatch.setattr(trt_build, "gpu_description", lambda device=0: ("Fake GPU", (8, 7)))
    engine = tmp_path / "m.engine"
    code, text = cli(["build-engine", str(pipeline["int8"]), "-o", str(engine), "--opt-batch", "4", "--max-batch",
                      "8"])
    assert code == 0, text
    assert [o.name for o in seen["graph"].output] == ["embedding"] and "builder_flags" not in seen  # strongly typed
    assert seen["profile"] == ("input", [1, 3, H, W], [4, 3, H, W], [8, 3, H, W])
    meta = sidecar_metadata(read_sidecar(engine))
    assert meta.precision == "int8" and meta.origin == "imported" and meta.output_names == ("embedding",)
    assert meta.gender_output == "" and meta.origin_file == "rgb.onnx" and meta.format_version == 2


# -- errors that name what was found and the fix ------------------------------------------------------------------

def test_several_outputs_need_embedding_output(tmp_path):
    two = export_foreign(tmp_path / "two.onnx", heads=True)
    with pytest.raises(ModelFileError, match=r"2 outputs \(feat \[batch, 24\], logits \[batch, 7\]\).*"
                                             r"--embedding-output"):
        import_model(two, tmp_path / "m.onnx", f"{H}x{W}", MEAN, STD, "rgb")
    with pytest.raises(ModelFileError, match="no output 'emb'; its outputs are feat"):
        import_model(two, tmp_path / "m.onnx", f"{H}x{W}", MEAN, STD, "rgb", embedding_output="emb")
    result = import_model(two, tmp_path / "m.onnx", f"{H}x{W}", MEAN, STD, "rgb", embedding_output="feat")
    assert result.dropped_outputs == ["logits"] and result.source_output == "feat"
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert not any("classifier" in i.name for i in graph.initializer)  # the classifier went with its output


def test_input_errors_name_what_was_found(nets, tmp_path):
    gray = export_foreign(tmp_path / "gray.onnx", channels=1)
    with pytest.raises(ModelFileError, match=r"1 channels where edgereid feeds 3"):
        import_model(gray, tmp_path / "m.onnx", f"{H}x{W}", MEAN, STD, "rgb")
    # rgb.onnx was exported with a fixed 64x32 input
    code, text = cli(["import-model", str(nets["foreign"]["rgb"]), "-o", str(tmp_path / "m.onnx"), "--input",
                      "128x64", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--color", "rgb"])
    assert code == 2 and "disagrees with the network's fixed input [1, 3, 64, 32]; pass --input 64x32" in text
    code, text = cli(["import-model", str(nets["rgb"]), "-o", str(tmp_path / "m.onnx"), *ARGS, "--color", "rgb"])
    assert code == 2 and "already carries edgereid metadata (origin imported" in text
    with pytest.raises(ModelFileError, match="--normalized yes, but the network's rows have norms"):
        import_model(nets["foreign"]["bgr"], tmp_path / "m.onnx", f"{H}x{W}", MEAN, STD, "bgr", normalized="yes")


def test_a_batch_fixed_inside_the_graph_is_refused(tmp_path):
    class Flat(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 2).reshape(1, 12)  # a hard-coded batch of 1

    path = tmp_path / "flat.onnx"
    torch.onnx.export(Flat(), (torch.randn(1, 3, H, W),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["feat"])
    with pytest.raises(ModelFileError, match="batch"):
        import_model(path, tmp_path / "m.onnx", f"{H}x{W}", MEAN, STD, "rgb")


@pytest.mark.parametrize("mean, std, units, message", [
    ("0.5,0.5", "0.5,0.5,0.5", "0-1", "three finite numbers"),
    ("0.5,0.5,0.5", "0.5,0,0.5", "0-1", "must be > 0"),
    ("123.675,116.28,103.53", "58.395,57.12,57.375", "0-1", "--units 0-255"),
    ("a,b,c", "0.5,0.5,0.5", "0-1", "comma-separated numbers"),
])
def test_preprocessing_values_are_checked(nets, tmp_path, mean, std, units, message):
    with pytest.raises(InvalidInputError, match=message):
        import_model(nets["foreign"]["norm"], tmp_path / "m.onnx", f"{H}x{W}", mean, std, "rgb", units=units)


def test_output_paths_are_checked(nets, tmp_path):
    src = nets["foreign"]["norm"]
    with pytest.raises(InvalidInputError, match="is the foreign file itself"):
        import_model(src, src, f"{H}x{W}", MEAN, STD, "rgb")
    with pytest.raises(InvalidInputError, match="NAME.onnx"):
        import_model(src, tmp_path / "m.xml", f"{H}x{W}", MEAN, STD, "rgb")
    with pytest.raises(InvalidInputError, match="HxW"):
        import_model(src, tmp_path / "m.onnx", "64by32", MEAN, STD, "rgb")
