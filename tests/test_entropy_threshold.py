"""The numpy KL threshold search chooses ONNX Runtime's entropy ranges to the bit, on histograms of every shape
ONNX Runtime's collector makes (merged batches widen them to odd bin counts) and through `activation_ranges`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
calibrate = pytest.importorskip("onnxruntime.quantization.calibrate")

from edgereid.calibration.entropy_threshold import entropy_threshold  # noqa: E402


def collected(batches, num_bins: int = 2048) -> tuple:
    """The histogram ONNX Runtime's entropy collector keeps for one tensor fed `batches` in turn."""
    collector = calibrate.HistogramCollector("entropy", True, num_bins, 128, 99.999, "same")
    for batch in batches:
        collector.collect_value({"t": [batch]})
    return collector.histogram_dict["t"]


@pytest.mark.parametrize("case", ["normal", "relu_widening", "heavy_tail", "few_values", "constant"])
def test_thresholds_equal_onnx_runtimes_kl_search(case):
    rng = np.random.default_rng(3)
    batches = {
        "normal": [rng.standard_normal(4000).astype(np.float32)],
        # a second batch with a wider range widens the histogram past 2048 bins
        "relu_widening": [np.maximum(rng.standard_normal(3000), 0).astype(np.float32),
                          3.7 * np.maximum(rng.standard_normal(3000), 0).astype(np.float32)],
        "heavy_tail": [rng.standard_t(2, 3000).astype(np.float32), rng.standard_t(2, 3000).astype(np.float32)],
        "few_values": [rng.standard_normal(7).astype(np.float32)],
        "constant": [np.full(100, 0.25, dtype=np.float32)],
    }[case]
    histogram = collected(batches, num_bins=512)
    theirs = calibrate.HistogramCollector.get_entropy_threshold(None, histogram, 128)
    ours = entropy_threshold(histogram, 128)
    assert [float(v) for v in ours] == [float(v) for v in theirs], (ours, theirs)
    assert all(v.dtype == histogram[1].dtype for v in ours)


def test_activation_ranges_by_entropy_equal_onnx_runtimes_own(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from edgereid.calibration.int8 import activation_ranges

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 8, 4])], initializer=weights)
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    batches = [{"x": (rng.standard_normal((2, 3, 8, 4)) * (1 + i)).astype(np.float32)} for i in range(3)]

    class Reader:
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    ours = activation_ranges(path, Reader(), "entropy", symmetric=True, op_types=("Conv", "Relu"))
    reference = calibrate.create_calibrator(
        Path(path), ["Conv", "Relu"], augmented_model_path=str(tmp_path / "aug.onnx"),
        calibrate_method=calibrate.CalibrationMethod.Entropy,
        extra_options={"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128})
    reference.collect_data(Reader())
    theirs = {name: tuple(float(np.asarray(v).reshape(-1)[0]) for v in value.range_value)
              for name, value in reference.compute_data().items()}
    assert ours == theirs and set(ours) >= {"x", "c1", "r1", "y"}
