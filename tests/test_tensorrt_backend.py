"""TensorRTBackend on fake `tensorrt`/`pycuda` modules: sidecar checks, batch splitting at the profile's max,
buffer reuse and growth, context push/pop from worker threads. A real-engine test lives in test_trt_build."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from edgereid.backends import tensorrt_backend as tb
from edgereid.errors import ModelVersionError
from edgereid.export.engine_sidecar import make_sidecar, write_sidecar
from edgereid.export.trt_build import optimization_profile
from edgereid.metadata import ModelMetadata

META = ModelMetadata(height=4, width=2, embedding_dim=3)


def _model(x: np.ndarray) -> dict:
    """The fake engine's network: embedding = per-channel means, gender_logit = sum of the input."""
    return {"embedding": x.mean(axis=(2, 3)), "gender_logit": x.sum(axis=(1, 2, 3)).reshape(-1, 1)}


class FakeCuda:
    """Enough of pycuda.driver: memory is a dict of numpy byte arrays keyed by fake addresses."""

    def __init__(self, name="FakeGPU", cc=(8, 7)):
        self.mem, self.next, self.allocs, self.ctx_depth, self.max_depth = {}, 4096, 0, {}, 0
        self.name, self.cc, self.lock = name, cc, threading.Lock()
        fake = self

        class Alloc:
            def __init__(self, nbytes):
                with fake.lock:
                    self.addr = fake.next
                    fake.next += nbytes + 4096
                    fake.allocs += 1
                fake.mem[self.addr] = np.zeros(nbytes, np.uint8)

            def __int__(self):
                return self.addr

            def free(self):
                fake.mem.pop(self.addr, None)

        class Ctx:
            def push(self):
                t = threading.get_ident()
                fake.ctx_depth[t] = fake.ctx_depth.get(t, 0) + 1

            def detach(self):
                fake.detached = True

        class Context:
            @staticmethod
            def pop():
                t = threading.get_ident()
                assert fake.ctx_depth.get(t, 0) > 0, "pop without push on this thread"
                fake.ctx_depth[t] -= 1

        self.Alloc, self.Context, self._ctx = Alloc, Context, Ctx()
        self.Stream = lambda: SimpleNamespace(handle=1, synchronize=lambda: None)

    def init(self):
        pass

    def Device(self, i):
        return SimpleNamespace(name=lambda: self.name, compute_capability=lambda: self.cc,
                               retain_primary_context=lambda: self._ctx)

    def pagelocked_empty(self, count, dtype):
        return np.empty(count, dtype)

    def mem_alloc(self, nbytes):
        return self.Alloc(nbytes)

    def memcpy_htod_async(self, dst, src, stream):
        assert self.ctx_depth.get(threading.get_ident(), 0) > 0, "CUDA call outside a pushed context"
        b = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        self.mem[int(dst)][:b.size] = b

    def memcpy_dtoh_async(self, dst, src, stream):
        dst.view(np.uint8).reshape(-1)[:] = self.mem[int(src)][:dst.nbytes]


class FakeEngine:
    def __init__(self, cuda, max_batch):
        self.cuda, self.max_batch, self.runs = cuda, max_batch, []
        self.names = ["images", "embedding", "gender_logit"]
        self.num_io_tensors = 3

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "IN" if name == "images" else "OUT"

    def get_tensor_dtype(self, name):
        return "f32"

    def create_execution_context(self):
        engine = self

        class Context:
            def __init__(self):
                self.shape, self.addr = None, {}

            def set_input_shape(self, name, shape):
                assert shape[0] <= engine.max_batch, "batch above the profile max"
                self.shape = shape

            def get_tensor_shape(self, name):
                n = self.shape[0]
                return (n, META.embedding_dim) if name == "embedding" else (n, 1)

            def set_tensor_address(self, name, addr):
                self.addr[name] = addr

            def execute_async_v3(self, handle):
                n = int(np.prod(self.shape))
                x = engine.cuda.mem[self.addr["images"]][:n * 4].view(np.float32).reshape(self.shape)
                engine.runs.append(self.shape[0])
                for name, value in _model(x).items():
                    b = value.astype(np.float32).view(np.uint8).reshape(-1)
                    engine.cuda.mem[self.addr[name]][:b.size] = b
                return True

        return Context()


def fake_trt(cuda, max_batch, version="10.3.0"):
    engine = FakeEngine(cuda, max_batch)
    return SimpleNamespace(
        __version__=version, Logger=type("L", (), {"WARNING": 0, "__init__": lambda self, level: None}),
        Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda blob: engine),
        TensorIOMode=SimpleNamespace(INPUT="IN"), nptype=lambda t: np.float32, engine=engine)


@pytest.fixture()
def engine_file(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"serialized")
    write_sidecar(path, make_sidecar(META, "10.3.0", "FakeGPU", (8, 7), optimization_profile(META, 1, 2, 4), "fp16"))
    return path


@pytest.fixture()
def libs(monkeypatch):
    cuda = FakeCuda()
    trt = fake_trt(cuda, max_batch=4)
    monkeypatch.setattr(tb, "_load_libs", lambda: (trt, cuda))
    return trt, cuda


def test_infer_splits_above_profile_max_and_reuses_buffers(engine_file, libs):
    trt, cuda = libs
    x = np.random.default_rng(0).standard_normal((11, 3, 4, 2)).astype(np.float32)
    with tb.TensorRTBackend(engine_file) as be:
        assert be.max_batch == 4 and be.metadata.precision == "fp16"
        out = be.infer({"images": x})
        np.testing.assert_allclose(out["embedding"], _model(x)["embedding"], rtol=1e-6)
        np.testing.assert_allclose(out["gender_logit"], _model(x)["gender_logit"], rtol=1e-5)
        assert trt.engine.runs == [4, 4, 3]
        allocs = cuda.allocs
        be.infer({"images": x[:2]})
        be.infer({"images": x[:4]})
        assert cuda.allocs == allocs  # buffers sized for the max batch are reused
    assert cuda.detached and all(d == 0 for d in cuda.ctx_depth.values())


def test_buffers_grow_on_demand(engine_file, libs):
    trt, cuda = libs
    x = np.ones((3, 3, 4, 2), np.float32)
    with tb.TensorRTBackend(engine_file) as be:
        be.infer({"images": x[:1]})
        first = cuda.allocs
        be.infer({"images": x[:1]})
        assert cuda.allocs == first  # same size: no new allocation
        out = be.infer({"images": x})  # 3 > capacity 1: grown once (to 4, the profile max)
        assert cuda.allocs == 2 * first and be._capacity == 4
        np.testing.assert_allclose(out["gender_logit"].ravel(), [8 * 3] * 3)


def test_user_max_batch_lowers_the_split(engine_file, libs):
    trt, _ = libs
    with tb.TensorRTBackend(engine_file, max_batch=2) as be:
        be.infer({"images": np.zeros((5, 3, 4, 2), np.float32)})
    assert trt.engine.runs == [2, 2, 1]


def test_worker_threads_share_one_backend(engine_file, libs):
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((int(rng.integers(1, 7)), 3, 4, 2)).astype(np.float32) for _ in range(16)]
    with tb.TensorRTBackend(engine_file) as be, ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda b: be.infer({"images": b}), batches))
    for b, o in zip(batches, outs):
        np.testing.assert_allclose(o["embedding"], _model(b)["embedding"], rtol=1e-6)


def test_engine_from_other_version_or_gpu_is_refused(engine_file, monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setattr(tb, "_load_libs", lambda: (fake_trt(cuda, 4, version="10.4.1"), cuda))
    with pytest.raises(ModelVersionError, match="Rebuild"):
        tb.TensorRTBackend(engine_file)
    other = FakeCuda(name="Orin", cc=(8, 7))
    monkeypatch.setattr(tb, "_load_libs", lambda: (fake_trt(other, 4), other))
    with pytest.raises(ModelVersionError, match="specific to a GPU"):
        tb.TensorRTBackend(engine_file)


def test_pure_helpers():
    assert tb.chunk_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert tb.chunk_ranges(0, 4) == []
    assert tb.grown_capacity(0, 3, 32) == 4 and tb.grown_capacity(4, 3, 32) == 4
    assert tb.grown_capacity(16, 20, 24) == 24
    assert tb.profile_max_batch({"profile": {"max": [32, 3, 256, 128]}}) == 32


def test_runtime_dispatches_engine_files(engine_file, libs):
    from edgereid import Runtime

    with Runtime(engine_file, max_batch=32) as rt:
        assert rt.backend_name == "tensorrt" and rt.max_batch == 4  # the profile caps the Runtime's chunks
        crops = [np.full((8, 4, 3), 100, np.uint8)] * 6
        out = rt.infer(crops)
    assert out.embeddings.shape == (6, 3)
