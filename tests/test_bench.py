"""Benchmark core: percentile math, iteration counting, stage accounting, file cycling, memory readings."""
from __future__ import annotations

import mmap

import numpy as np
import pytest

from conftest import load_sweep
from edgereid.bench.runner import BenchResult, format_table, run_benchmark, synthetic_crops
from edgereid.bench.timing import LatencyStats, peak_rss_bytes, percentile, reset_peak_rss
from edgereid.errors import InvalidInputError
from edgereid.runtime.output import Output


class CountingRuntime:
    """Records every batch it is given; optionally allocates memory to exercise the peak-RSS reading."""

    def __init__(self, max_batch: int = 8, allocate_mib: int = 0) -> None:
        self.max_batch = max_batch
        self.allocate_mib = allocate_mib
        self.calls: list = []

    def infer(self, crops) -> Output:
        crops = list(crops)
        self.calls.append([c.shape for c in crops])
        if self.allocate_mib:
            # Fresh anonymous pages (not heap memory an earlier test freed), written so they become resident.
            size = self.allocate_mib * 1024 * 1024
            with mmap.mmap(-1, size) as buf:
                view = np.frombuffer(buf, np.uint8)
                view[:] = 1
                assert int(view[::4096].sum()) == size // 4096
                del view
        return Output(np.zeros((len(crops), 4), np.float32), np.zeros(len(crops), np.float32))


@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy_linear(q, n):
    samples = np.random.default_rng(n).exponential(3.0, n)
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12, abs=1e-12)


def test_percentile_hand_worked_values():
    assert percentile([4, 1, 3, 2], 50) == 2.5  # midway between the 2nd and 3rd order statistics
    assert percentile(range(11), 90) == 9.0
    assert percentile([10, 20], 99) == pytest.approx(19.9)  # 10 + 0.99 * (20 - 10)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_stats_are_milliseconds_of_the_samples():
    s = LatencyStats.from_seconds([0.001, 0.002, 0.003, 0.010])
    assert s.count == 4
    assert s.mean_ms == pytest.approx(4.0)
    assert (s.min_ms, s.max_ms) == (pytest.approx(1.0), pytest.approx(10.0))
    assert s.p50_ms == pytest.approx(2.5)
    assert s.p90_ms == pytest.approx(3 + 0.7 * 7)  # position 2.7 between 3 ms and 10 ms


def test_fixed_count_mode_runs_exactly_warmup_plus_iters_calls():
    rt = CountingRuntime()
    result = run_benchmark(rt, batch=3, warmup=4, iters=11, crops=synthetic_crops(5, min_hw=(8, 4), max_hw=(16, 8)))
    assert len(rt.calls) == 4 + 11
    assert all(len(call) == 3 for call in rt.calls)
    assert result.iterations == 11 and result.latency.count == 11 and result.mode == "count"
    # images/s is images over the summed call time: batch / mean latency.
    assert result.images_per_s == pytest.approx(3 / (result.latency.mean_ms / 1e3), rel=1e-9)


def test_fixed_time_mode_stops_after_duration_and_counts_its_calls():
    rt = CountingRuntime()
    result = run_benchmark(rt, batch=2, warmup=1, iters=1, duration=0.05,
                           crops=synthetic_crops(4, min_hw=(8, 4), max_hw=(16, 8)))
    assert result.mode == "time" and result.iterations >= 1
    assert len(rt.calls) == 1 + result.iterations  # `iters` is ignored in fixed-time mode
    assert result.wall_s >= 0.05


def test_crops_cycle_in_order_across_iterations():
    crops = [np.zeros((10 + i, 5, 3), np.uint8) for i in range(5)]
    rt = CountingRuntime()
    run_benchmark(rt, batch=2, warmup=0, iters=4, crops=crops)
    heights = [shape[0] for call in rt.calls for shape in call]
    assert heights == [10, 11, 12, 13, 14, 10, 11, 12]


def test_files_mode_decodes_files_and_times_the_decode_stage(tmp_path):
    cv2 = pytest.importorskip("cv2")
    files = []
    for i in range(3):
        path = tmp_path / f"crop{i}.jpg"
        cv2.imwrite(str(path), np.full((20 + i, 9, 3), 40 * i, np.uint8))
        files.append(path)
    rt = CountingRuntime()
    result = run_benchmark(rt, batch=2, warmup=1, iters=2, files=files)
    # warm-up call 0 takes files 0,1; timed calls 1 and 2 take 2,0 and 1,2.
    assert [[s[0] for s in call] for call in rt.calls] == [[20, 21], [22, 20], [21, 22]]
    assert set(result.stages_ms) == {"decode"}  # a plain runtime without infer_batch_timed reports decode only
    assert 0 < result.stages_ms["decode"] <= result.latency.mean_ms


def test_rejects_batches_the_runtime_cannot_take():
    with pytest.raises(InvalidInputError, match="max_batch"):
        run_benchmark(CountingRuntime(max_batch=4), batch=8, iters=1)
    with pytest.raises(InvalidInputError):
        run_benchmark(CountingRuntime(), batch=0, iters=1)
    with pytest.raises(InvalidInputError):
        run_benchmark(CountingRuntime(), batch=1, iters=0)


def test_peak_memory_covers_allocations_inside_the_timed_calls():
    if not reset_peak_rss():
        pytest.skip("this kernel does not allow resetting the RSS high-water mark (/proc/self/clear_refs)")
    result = run_benchmark(CountingRuntime(allocate_mib=48), batch=1, warmup=0, iters=2,
                           crops=synthetic_crops(1, min_hw=(8, 4), max_hw=(8, 4)))
    assert result.peak_rss_mib - result.rss_before_mib >= 40
    assert peak_rss_bytes() >= result.rss_before_mib * 1024 * 1024


def test_real_runtime_stages_are_present_and_sum_to_at_most_the_latency(model_files, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from edgereid.runtime import Runtime

    crops = synthetic_crops(3, seed=1, min_hw=(60, 30), max_hw=(120, 60))
    files = []
    for i, crop in enumerate(crops):
        files.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(files[-1]), crop)
    with Runtime(model_files["onnx"], max_batch=4, threads=1) as rt:
        result = run_benchmark(rt, batch=2, warmup=1, iters=3, files=files)
    assert list(result.stages_ms) == ["decode", "preprocess", "inference", "postprocess"]
    assert all(v > 0 for v in result.stages_ms.values())
    # Each call's stages are timed inside the call, so their mean sum cannot exceed the mean latency.
    assert result.stage_sum_ms <= result.latency.mean_ms
    d = result.to_dict()
    assert d["backend"] == "onnxruntime" and d["precision"] == "fp32" and d["batch"] == 2
    assert 0 < d["stage_coverage"] <= 1
    table = format_table([result])
    assert "model.onnx" in table and "infer ms" in table and "dec ms" in table


def test_result_row_has_every_stage_column():
    stats = LatencyStats.from_seconds([0.01])
    r = BenchResult("m.onnx", "onnxruntime", "fp32", "float32", 1, None, "count", 0, 1, 0.01, stats, 100.0,
                    {"inference": 8.0, "preprocess": 1.0})
    row = r.row()
    assert row["inference_ms"] == 8.0 and row["decode_ms"] is None and row["host_to_device_ms"] is None
    assert r.stage_sum_ms == 9.0


def test_bench_cli_writes_one_result_per_batch_and_thread_count(model_files, tmp_path):
    import json

    from click.testing import CliRunner

    from edgereid.cli.bench_cmd import bench

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench, [str(model_files["onnx"]), "--batch", "2,1", "--threads", "1", "--warmup", "0",
                                     "--iters", "2", "--json", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [(r["batch"], r["threads"], r["iterations"]) for r in data["results"]] == [(1, 1, 2), (2, 1, 2)]
    assert data["host"]["logical_cores"] >= 1
    assert "p50 ms" in res.output
    bad = CliRunner().invoke(bench, [str(model_files["onnx"]), "--batch", "1,x"])
    assert bad.exit_code != 0 and "comma-separated" in bad.output


def test_sweep_script_writes_json_csv_and_plots(model_files, tmp_path, monkeypatch):
    import csv
    import json

    sweep_mod = load_sweep(monkeypatch)
    out = tmp_path / "sweep"
    sweep_mod.main(["--models", str(model_files["onnx"]), "--batch", "1,2", "--threads", "1", "--warmup", "0",
                    "--iters", "1", "-o", str(out)])
    data = json.loads((out / "sweep.json").read_text())
    assert {"cpu", "logical_cores", "libraries"} <= set(data["machine"])
    assert [r["batch"] for r in data["results"]] == [1, 2]
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["batch"]) for r in rows] == [1, 2] and all(float(r["images_per_s"]) > 0 for r in rows)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "latency.png").exists()  # JSON/CSV only, as the script says
    else:
        for name in ("latency.png", "throughput.png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_merge_results_pools_samples_and_weights_stages_by_iterations():
    from edgereid.bench.runner import merge_results

    def result(samples, stages):
        return BenchResult("m.onnx", "onnxruntime", "fp32", "float32", 4, 1, "count", 0, len(samples), sum(samples),
                           LatencyStats.from_seconds(samples), 4 * len(samples) / sum(samples), stages,
                           peak_rss_mib=100.0 + len(samples), samples_s=list(samples))

    a = result([0.010, 0.020], {"inference": 12.0})
    b = result([0.030, 0.040, 0.050, 0.060], {"inference": 42.0, "decode": 3.0})
    m = merge_results([a, b])
    assert m.iterations == 6 and m.latency.count == 6
    assert m.latency.p50_ms == pytest.approx(35.0)  # median of 10..60 ms
    assert m.images_per_s == pytest.approx(4 * 6 / 0.21)
    assert m.stages_ms["inference"] == pytest.approx((12.0 * 2 + 42.0 * 4) / 6)
    assert m.stages_ms["decode"] == pytest.approx(3.0 * 4 / 6)
    assert m.peak_rss_mib == 104.0
