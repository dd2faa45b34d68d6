"""Benchmark core shared by `edgereid bench` and benchmarks/sweep.py: warm-up, fixed-count or fixed-time
runs, latency percentiles, images/s, peak memory and a per-stage breakdown of where the time goes."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from edgereid.bench.timing import LatencyStats, current_rss_bytes, peak_rss_bytes, reset_peak_rss
from edgereid.errors import InvalidInputError
from edgereid.imageio import read_image
from edgereid.progress import progress as progress_bar

# Pipeline order. The Runtime times preprocess / inference / postprocess in its loop; a backend that splits its
# call reports host_to_device / inference / device_to_host itself (TensorRT, by CUDA events); ONNX Runtime and
# PyTorch on a CPU have no device copies to report.
STAGES = ("decode", "preprocess", "host_to_device", "inference", "device_to_host", "postprocess")
MIB = 1024 * 1024


def synthetic_crops(n: int, seed: int = 0, min_hw=(96, 40), max_hw=(384, 192)) -> list:
    """n uint8 BGR crops of detector-like, varied sizes (so every call pays a real resize)."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        h = int(rng.integers(min_hw[0], max_hw[0] + 1))
        w = int(rng.integers(min_hw[1], max_hw[1] + 1))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(yy * rng.uniform(0.3, 2) + xx * rng.uniform(0.3, 2) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)
        crops.append(np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))
    return crops


@dataclass
class BenchResult:
    """One configuration's measurements (latency per batch call; stages are mean ms per call)."""

    model: str
    backend: str
    precision: str
    input_dtype: str
    batch: int
    threads: int | None
    mode: str  # "count" or "time"
    warmup: int
    iterations: int
    wall_s: float
    latency: LatencyStats
    images_per_s: float
    stages_ms: dict = field(default_factory=dict)
    peak_rss_mib: float | None = None
    rss_before_mib: float | None = None
    samples_s: list = field(default_factory=list, repr=False)  # per-call seconds, for merge_results
    int8_arithmetic: str | None = None  # how an INT8 file computed (Runtime.int8_arithmetic)
    backbone: str | None = None  # the model's backbone, from its metadata (None: not recorded)
    gmacs: float | None = None  # multiply-accumulates per crop, from the metadata: what a crop costs

    @property
    def stage_sum_ms(self) -> float:
        """Sum of the mean stage times; at most the mean latency (the rest is Python overhead)."""
        return float(sum(self.stages_ms.values()))

    def to_dict(self) -> dict:
        """JSON-ready nested dict."""
        return {
            "model": self.model, "backend": self.backend, "precision": self.precision,
            "input_dtype": self.input_dtype, "batch": self.batch, "threads": self.threads, "mode": self.mode,
            "warmup": self.warmup, "iterations": self.iterations, "wall_s": self.wall_s,
            "latency": self.latency.to_dict(), "images_per_s": self.images_per_s,
            "stages_ms": dict(self.stages_ms), "stage_sum_ms": self.stage_sum_ms,
            "stage_coverage": self.stage_sum_ms / self.latency.mean_ms if self.latency.mean_ms else None,
            "peak_rss_mib": self.peak_rss_mib, "rss_before_mib": self.rss_before_mib,
            "int8_arithmetic": self.int8_arithmetic, "backbone": self.backbone, "gmacs": self.gmacs,
        }

    def row(self) -> dict:
        """One flat row for CSV files and terminal tables."""
        row = {"model": self.model, "backend": self.backend, "precision": self.precision,
               "input_dtype": self.input_dtype, "batch": self.batch, "threads": self.threads,
               "iterations": self.iterations, "p50_ms": self.latency.p50_ms, "p90_ms": self.latency.p90_ms,
               "p99_ms": self.latency.p99_ms, "mean_ms": self.latency.mean_ms, "images_per_s": self.images_per_s,
               "peak_rss_mib": self.peak_rss_mib}
        for stage in STAGES:
            row[f"{stage}_ms"] = self.stages_ms.get(stage)
        return row


def _make_step(runtime, batch: int, crops: Sequence[np.ndarray] | None, files: Sequence | None) -> Callable:
    """A function(i) -> (seconds, {stage: seconds}) running iteration i on `batch` crops or files."""
    if files:
        files = list(files)
    else:
        crops = list(crops) if crops is not None else synthetic_crops(max(batch, 16))
        if not crops:
            raise InvalidInputError("benchmark needs at least one crop (or image file)")

    def step(i: int) -> tuple:
        start = time.perf_counter()
        stages = {}
        if files:
            # Cycle through the files so a long run does not decode the same few images only.
            picked = [files[(i * batch + j) % len(files)] for j in range(batch)]
            items = [read_image(p) for p in picked]
            stages["decode"] = time.perf_counter() - start
        else:
            items = [crops[(i * batch + j) % len(crops)] for j in range(batch)]
        runtime.infer(items)
        # The Runtime's loop times its own stages (a duck-typed runtime may not).
        stages.update(getattr(runtime, "last_stage_times", None) or {})
        return time.perf_counter() - start, stages

    return step


def run_benchmark(runtime, batch: int, warmup: int = 20, iters: int = 200, duration: float | None = None,
                  crops: Sequence[np.ndarray] | None = None, files: Sequence | None = None,
                  threads: int | None = None, progress: bool = False) -> BenchResult:
    """Time `runtime` on batches of `batch` crops (or image files, adding the decode stage).

    Fixed-count mode (duration=None) times exactly `iters` calls after `warmup` untimed ones;
    fixed-time mode times calls until `duration` seconds have passed (at least one call).
    """
    if batch < 1:
        raise InvalidInputError(f"batch must be >= 1, got {batch}")
    limit = getattr(runtime, "max_batch", None)
    if limit is not None and batch > limit:
        raise InvalidInputError(f"batch {batch} exceeds the runtime's max_batch={limit}; open the Runtime with "
                                f"max_batch>={batch} (an engine must be built with a profile that allows it).")
    if duration is None and iters < 1:
        raise InvalidInputError(f"iters must be >= 1, got {iters}")
    if duration is not None and duration <= 0:
        raise InvalidInputError(f"duration must be > 0 seconds, got {duration}")
    step = _make_step(runtime, batch, crops, files)
    for i in range(max(0, warmup)):
        step(i)
    rss_before = current_rss_bytes()
    reset_peak_rss()
    latencies: list = []
    stage_totals: dict = {}
    bar = progress_bar(total=None if duration else iters, desc=f"batch {batch}", unit="call", enabled=progress,
                       leave=False)
    t_start = time.perf_counter()
    i = 0
    while True:
        seconds, stages = step(warmup + i)
        latencies.append(seconds)
        for name, value in stages.items():
            stage_totals[name] = stage_totals.get(name, 0.0) + value
        i += 1
        bar.update(1)
        if duration is None:
            if i >= iters:
                break
        elif time.perf_counter() - t_start >= duration:
            break
    wall = time.perf_counter() - t_start
    bar.close()
    meta = getattr(runtime, "metadata", None)
    ordered = {s: 1e3 * stage_totals[s] / i for s in STAGES if s in stage_totals}
    ordered.update({s: 1e3 * v / i for s, v in stage_totals.items() if s not in ordered})
    return BenchResult(
        model=str(getattr(runtime, "path", "") or ""), backend=str(getattr(runtime, "backend_name", "unknown")),
        precision=str(getattr(meta, "precision", "unknown")), input_dtype=str(getattr(meta, "input_dtype", "unknown")),
        batch=batch, threads=threads, mode="count" if duration is None else "time", warmup=max(0, warmup),
        iterations=i, wall_s=wall, latency=LatencyStats.from_seconds(latencies),
        images_per_s=batch * i / float(np.sum(latencies)), stages_ms=ordered,
        peak_rss_mib=peak_rss_bytes() / MIB, rss_before_mib=rss_before / MIB if rss_before is not None else None,
        samples_s=latencies, int8_arithmetic=getattr(runtime, "int8_arithmetic", None),
        backbone=getattr(meta, "backbone", None) or None, gmacs=getattr(meta, "gmacs", None),
    )


def merge_results(results: Sequence[BenchResult]) -> BenchResult:
    """Pool several runs of one configuration (e.g. rounds interleaved with other models) into one result."""
    if not results:
        raise InvalidInputError("merge_results needs at least one result")
    first = results[0]
    samples = [t for r in results for t in r.samples_s]
    total = sum(r.iterations for r in results)
    stages: dict = {}
    for r in results:
        for name, ms in r.stages_ms.items():
            stages[name] = stages.get(name, 0.0) + ms * r.iterations / total
    peaks = [r.peak_rss_mib for r in results if r.peak_rss_mib is not None]
    return BenchResult(
        model=first.model, backend=first.backend, precision=first.precision, input_dtype=first.input_dtype,
        batch=first.batch, threads=first.threads, mode=first.mode, warmup=first.warmup, iterations=total,
        wall_s=sum(r.wall_s for r in results), latency=LatencyStats.from_seconds(samples),
        images_per_s=first.batch * len(samples) / float(np.sum(samples)), stages_ms=stages,
        peak_rss_mib=max(peaks) if peaks else None, rss_before_mib=first.rss_before_mib, samples_s=samples,
        int8_arithmetic=first.int8_arithmetic, backbone=first.backbone, gmacs=first.gmacs)


def sweep(model: str | os.PathLike, batches: Sequence[int], threads: Sequence[int | None] = (None,),
          backend: str | None = None, progress: bool = False, runtime_options: dict | None = None,
          **kwargs) -> Iterator[BenchResult]:
    """Open the model once per thread count and benchmark every batch size; yields one result per config.

    `runtime_options` go to `Runtime` (e.g. {"int8_kernels": "fast"}).
    """
    from edgereid.runtime import Runtime

    batches = sorted({int(b) for b in batches})
    for n_threads in threads:
        with Runtime(model, backend=backend, max_batch=max(batches), threads=n_threads,
                     **(runtime_options or {})) as runtime:
            for batch in batches:
                yield run_benchmark(runtime, batch, threads=n_threads, progress=progress, **kwargs)


def format_table(results: Sequence[BenchResult]) -> str:
    """A fixed-width terminal table: latency percentiles, throughput, memory and the stage split."""
    stages = [s for s in STAGES if any(s in r.stages_ms for r in results)]
    short = {"decode": "dec", "preprocess": "pre", "host_to_device": "h2d", "inference": "infer",
             "device_to_host": "d2h", "postprocess": "post"}
    head = ["model", "prec", "batch", "thr", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak MiB"]
    head += [f"{short[s]} ms" for s in stages]
    rows = []
    for r in results:
        rows.append([os.path.basename(r.model) or "-", r.precision, str(r.batch), str(r.threads or "auto"),
                     f"{r.latency.p50_ms:.2f}", f"{r.latency.p90_ms:.2f}", f"{r.latency.p99_ms:.2f}",
                     f"{r.images_per_s:.1f}", f"{r.peak_rss_mib:.0f}" if r.peak_rss_mib is not None else "-"]
                    + [f"{r.stages_ms[s]:.2f}" if s in r.stages_ms else "-" for s in stages])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
