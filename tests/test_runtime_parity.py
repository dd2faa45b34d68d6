"""ONNX Runtime equals PyTorch on the same crops, fused or not, however the crops are batched."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_crops

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def torch_reference(reference_model):
    """PyTorch outputs computed directly from the model on independently preprocessed crops."""
    import torch

    from edgereid.metadata import ModelMetadata
    from edgereid.runtime.preprocess import Preprocessor

    def run(crops):
        x = torch.from_numpy(Preprocessor(ModelMetadata()).prepare(crops))
        with torch.no_grad():
            out = reference_model(x)
        return out["embedding"].numpy(), torch.sigmoid(out["gender_logit"]).numpy().reshape(-1)

    return run


@pytest.mark.parametrize("batch", [1, 7, 32])
@pytest.mark.parametrize("kind", ["onnx", "fused_onnx"])
def test_onnxruntime_matches_pytorch(model_files, torch_reference, kind, batch):
    from edgereid import Runtime

    crops = make_crops(batch, seed=batch)
    want_emb, want_prob = torch_reference(crops)
    out = Runtime(model_files[kind], max_batch=32).infer(crops)
    assert out.embeddings.shape == (batch, 128) and out.embeddings.dtype == np.float32
    assert out.gender_prob.shape == (batch,) and out.gender_prob.dtype == np.float32
    assert np.abs(out.embeddings - want_emb).max() <= 1e-4
    assert np.abs(out.gender_prob - want_prob).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)
    # The outputs carry real signal: different crops give different embeddings and probabilities.
    if batch > 1:
        assert np.abs(out.embeddings[0] - out.embeddings[1]).max() > 1e-3
        assert np.ptp(out.gender_prob) > 1e-4


def test_torch_backend_matches_direct_model(model_files, torch_reference):
    from edgereid import Runtime

    crops = make_crops(5, seed=11)
    want_emb, want_prob = torch_reference(crops)
    rt = Runtime(model_files["checkpoint"])
    assert rt.backend_name == "torch"
    out = rt.infer(crops)
    np.testing.assert_allclose(out.embeddings, want_emb, atol=1e-5)
    np.testing.assert_allclose(out.gender_prob, want_prob, atol=1e-5)


@pytest.mark.parametrize("kind", ["onnx", "fused_onnx"])
def test_results_do_not_depend_on_batch_split(model_files, kind):
    from edgereid import Runtime

    crops = make_crops(23, seed=3)
    whole = Runtime(model_files[kind], max_batch=32).infer(crops)
    for max_batch in (1, 4, 10):
        split = Runtime(model_files[kind], max_batch=max_batch).infer(crops)
        np.testing.assert_allclose(split.embeddings, whole.embeddings, atol=1e-5)
        np.testing.assert_allclose(split.gender_prob, whole.gender_prob, atol=1e-5)
    # Order is kept: crop i of the list is row i of the result, whatever the chunking.
    single = Runtime(model_files[kind]).infer(crops[17])
    np.testing.assert_allclose(single.embeddings[0], whole.embeddings[17], atol=1e-5)


def test_metadata_configures_runtime(model_files, reference_model):
    from edgereid import Runtime
    from edgereid.training.checkpoint import weights_sha256

    plain, fused = Runtime(model_files["onnx"]), Runtime(model_files["fused_onnx"])
    assert (plain.metadata.input_dtype, plain.metadata.input_layout, plain.metadata.color_order) == \
        ("float32", "NCHW", "RGB")
    assert (fused.metadata.input_dtype, fused.metadata.input_layout, fused.metadata.color_order) == \
        ("uint8", "NHWC", "BGR")
    assert fused.metadata.normalize_in_graph and not plain.metadata.normalize_in_graph
    assert plain.metadata.weights_sha256 == weights_sha256(reference_model) == fused.metadata.weights_sha256
    assert plain.metadata.gender_positive_class == "female"
    assert plain.metadata.output_names == ("embedding", "gender_logit")
    # The fused runtime hands the graph raw uint8 pixels: normalisation happens exactly once.
    batch = fused.preprocessor.prepare(make_crops(2))
    assert batch.dtype == np.uint8 and batch.shape == (2, 256, 128, 3)


def test_output_labels_follow_probability():
    from edgereid.runtime.output import Output, sigmoid

    out = Output(np.zeros((3, 4), np.float32), sigmoid(np.array([-3.0, 0.0, 2.0])))
    assert list(out.gender_labels) == ["male", "female", "female"]
    np.testing.assert_allclose(out.gender_prob, 1 / (1 + np.exp([3.0, 0.0, -2.0])), rtol=1e-6)
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 1000.0])), [0.0, 1.0])
