"""FP16 ONNX: fp32 boundary, InstanceNorm and L2-normalisation kept in fp32, outputs close to PyTorch."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_crops

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def fp16_files(reference_model, tmp_path_factory):
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("fp16")
    fp32 = export_onnx(reference_model, root / "model.onnx")
    return fp32, quantize_fp16(fp32, root / "model.fp16.onnx")


def against_pytorch(model, fp16_path, crops) -> tuple:
    """(Runtime output of the fp16 file, embedding cosine to PyTorch, |gender prob difference|) on `crops`."""
    from edgereid import Runtime

    with Runtime(fp16_path) as rt:
        assert rt.metadata.precision == "fp16"
        got = rt.infer(crops)
        batch = rt.preprocessor.prepare(crops)
    with torch.no_grad():
        ref = model(torch.from_numpy(batch))
    emb = ref["embedding"].numpy()
    prob = torch.sigmoid(ref["gender_logit"]).numpy().reshape(-1)
    cosine = (got.embeddings * emb).sum(1) / np.linalg.norm(got.embeddings, axis=1) / np.linalg.norm(emb, axis=1)
    return got, cosine, np.abs(got.gender_prob - prob)


def test_fp16_embeddings_match_pytorch(reference_model, fp16_files):
    got, cosine, prob_err = against_pytorch(reference_model, fp16_files[1], make_crops(6, seed=11))
    assert cosine.min() >= 0.999, cosine
    np.testing.assert_allclose(np.linalg.norm(got.embeddings, axis=1), 1.0, atol=1e-5)  # norm applied in fp32
    assert prob_err.max() < 5e-3


def test_fp16_on_the_trained_model_keeps_cosine_0999(trained_small, small_synthetic, tmp_path):
    """The issue's check on a trained synthetic model: FP16 ONNX embeddings cosine >= 0.999 to PyTorch."""
    from conftest import export_small
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.imageio import read_images

    model = trained_small["model"]
    fp16 = quantize_fp16(export_small(model, tmp_path / "trained.onnx"), tmp_path / "trained.fp16.onnx")
    _, cosine, prob_err = against_pytorch(model, fp16, read_images(small_synthetic["splits"].paths("query")[:64]))
    assert cosine.min() >= 0.999, cosine.min()
    assert prob_err.max() < 5e-3


def test_fp16_graph_keeps_boundary_and_sensitive_ops_in_fp32(fp16_files):
    from onnx import TensorProto

    model = onnx.load(str(fp16_files[1]))
    g = model.graph
    F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in g.input] == [F32]
    assert {o.name: o.type.tensor_type.elem_type for o in g.output} == {"embedding": F32, "gender_logit": F32}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = list(inferred.graph.value_info) + list(g.input) + list(g.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({i.name: i.data_type for i in g.initializer})
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == F16 and types[n.output[0]] == F16 for n in convs)
    norms = [n for n in g.node if n.op_type in ("InstanceNormalization", "ReduceL2", "Div")]
    assert len([n for n in norms if n.op_type == "InstanceNormalization"]) == 6
    for n in norms:
        assert all(types[name] == F32 for name in n.input if name), n.name
        assert types[n.output[0]] == F32
    # the file is really smaller: fp16 weights
    assert fp16_files[1].stat().st_size < 0.6 * fp16_files[0].stat().st_size


def test_fp16_refuses_non_fp32_input(fp16_files, tmp_path):
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.errors import ModelFileError

    with pytest.raises(ModelFileError, match="already fp16"):
        quantize_fp16(fp16_files[1], tmp_path / "x.onnx")
