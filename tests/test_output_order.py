"""Every file edgereid writes lists `embedding` first: trackers' ReID backends read output 0 by position."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def positions(path) -> list:
    """The output names in graph order, as ONNX Runtime (and so boxmot's ONNX backend) reports them."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(o.name, o.shape) for o in session.get_outputs()]


def test_exported_and_converted_files_put_embedding_first(model_files, tmp_path):
    from edgereid.calibration.fp16 import quantize_fp16

    fp16 = quantize_fp16(model_files["onnx"], tmp_path / "model.fp16.onnx")
    for path in (model_files["onnx"], model_files["fused_onnx"], fp16):
        (first, shape), (second, _) = positions(path)
        assert (first, second) == ("embedding", "gender_logit"), path
        assert shape[1] == 128, (path, shape)


@pytest.mark.parametrize("form", ["int8_tensorrt_file", "int8_cpu_file"])
def test_int8_files_put_embedding_first(form, request, int8_setup):
    path = request.getfixturevalue(form)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.zeros((2, 3, 64, 32), np.float32)
    out0 = session.run(None, {session.get_inputs()[0].name: feed})[0]  # by position, as boxmot reads it
    assert session.get_outputs()[0].name == "embedding" and out0.shape == (2, 128)
    assert np.allclose(np.linalg.norm(out0, axis=1), 1.0, atol=1e-2)


def test_save_onnx_moves_embedding_to_position_0(model_files, tmp_path):
    from edgereid.export.metadata import load_onnx, save_onnx

    proto = load_onnx(model_files["onnx"])
    outputs = list(proto.graph.output)
    del proto.graph.output[:]
    proto.graph.output.extend(reversed(outputs))  # a graph from elsewhere with gender first
    assert proto.graph.output[0].name == "gender_logit"
    out = save_onnx(proto, tmp_path / "swapped.onnx")
    assert [name for name, _ in positions(out)] == ["embedding", "gender_logit"]
