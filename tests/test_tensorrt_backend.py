"""TensorRTBackend on a fake `tensorrt`: sidecar checks, batch splitting at the profile's max, buffer reuse and
growth, context push/pop from worker threads. Each test runs twice: on a fake `pycuda.driver` everywhere, and on the
real pycuda with a GPU where one exists (the fake engine's network then runs as async copies on the backend's own
stream, as a TensorRT engine would). A real-engine test lives in test_trt_build."""
from __future__ import annotations

import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from edgereid.backends import tensorrt_backend as tb
from edgereid.backends.tensorrt_engine import make_sidecar, write_sidecar
from edgereid.errors import ModelVersionError
from edgereid.export.trt_build import optimization_profile
from edgereid.metadata import ModelMetadata

META = ModelMetadata(height=4, width=2, embedding_dim=3, embedding_normalized=False)  # the fake net copies, no L2
D = META.embedding_dim


def _model(x: np.ndarray, attributes: int = 0) -> dict:
    """The fake engine's network, simple enough for a GPU to run as copies: the first D values of each sample
    are its embedding, the next one its gender logit, the `attributes` after it its attribute logits."""
    flat = x.reshape(len(x), -1)
    out = {"embedding": flat[:, :D], "gender_logit": flat[:, D:D + 1]}
    if attributes:
        out["attribute_logits"] = flat[:, D + 1:D + 1 + attributes]
    return out


class ContextDepth:
    """Per-thread context push depth and detach, the observables the tests check on both CUDA stand-ins.

    `Ctx(real)` forwards push/detach to a real context when given one; `Context.pop()` forwards to `real_pop`.
    """

    def __init__(self, real_pop=None):
        self.ctx_depth, self.detached = {}, False
        tracker = self

        class Ctx:
            def __init__(self, real=None):
                self.real = real

            def push(self):
                if self.real is not None:
                    self.real.push()
                t = threading.get_ident()
                tracker.ctx_depth[t] = tracker.ctx_depth.get(t, 0) + 1

            def detach(self):
                if self.real is not None:
                    self.real.detach()
                tracker.detached = True

        class Context:
            @staticmethod
            def pop():
                t = threading.get_ident()
                assert tracker.ctx_depth.get(t, 0) > 0, "pop without push on this thread"
                if real_pop is not None:
                    real_pop()
                tracker.ctx_depth[t] -= 1

        self.Ctx, self.Context = Ctx, Context


class FakeCuda(ContextDepth):
    """Enough of pycuda.driver: memory is a dict of numpy byte arrays keyed by fake addresses. Time on the fake
    stream is a clock the operations advance by fixed amounts, read by its CUDA events."""

    HTOD_MS, EXECUTE_MS, DTOH_MS = 1.0, 5.0, 0.25  # per copy call / per execution

    def __init__(self, name="FakeGPU", cc=(8, 7)):
        super().__init__()
        self.mem, self.next, self.allocs = {}, 4096, 0
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

        self.Alloc, self._ctx = Alloc, self.Ctx()
        self.Stream = lambda: SimpleNamespace(handle=1, synchronize=lambda: None)
        self.clock_ms = 0.0

        class Event:
            def record(self, stream=None):
                self.t = fake.clock_ms

            def time_since(self, other):
                return self.t - other.t

        self.Event = Event

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
        self.clock_ms += self.HTOD_MS

    def memcpy_dtoh_async(self, dst, src, stream):
        dst.view(np.uint8).reshape(-1)[:] = self.mem[int(src)][:dst.nbytes]
        self.clock_ms += self.DTOH_MS


class FakeEngine:
    def __init__(self, execute, max_batch, attributes=0):
        self.execute, self.max_batch, self.runs = execute, max_batch, []
        self.widths = {"embedding": META.embedding_dim, "gender_logit": 1}
        if attributes:
            self.widths["attribute_logits"] = attributes
        self.names = ["images", *self.widths]
        self.num_io_tensors = len(self.names)

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
                return (self.shape[0], engine.widths[name])

            def set_tensor_address(self, name, addr):
                self.addr[name] = addr

            def execute_async_v3(self, handle):
                engine.runs.append(self.shape[0])
                engine.execute(self.shape, self.addr, handle)
                return True

        return Context()


def fake_memory_network(cuda, attributes=0):
    """_model on FakeCuda's memory."""
    def execute(shape, addr, stream):
        n = int(np.prod(shape))
        x = cuda.mem[addr["images"]][:n * 4].view(np.float32).reshape(shape)
        for name, value in _model(x, attributes).items():
            b = np.ascontiguousarray(value, np.float32).view(np.uint8).reshape(-1)
            cuda.mem[addr[name]][:b.size] = b
        cuda.clock_ms += cuda.EXECUTE_MS
    return execute


def gpu_copy_network(attributes=0):
    """_model on a GPU: device-to-device copies queued on the stream handle the backend passes, as TensorRT's
    enqueue would be; any ordering or address mistake in the backend shows up as wrong numbers."""
    lib = ctypes.CDLL("libcuda.so.1")
    copy = lib.cuMemcpyDtoDAsync_v2
    copy.argtypes, copy.restype = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p], ctypes.c_int

    def execute(shape, addr, stream):
        sample = int(np.prod(shape[1:])) * 4
        for i in range(shape[0]):
            src = addr["images"] + i * sample
            copies = [(addr["embedding"] + i * D * 4, 0, D * 4), (addr["gender_logit"] + i * 4, D * 4, 4)]
            if attributes:
                copies.append((addr["attribute_logits"] + i * attributes * 4, (D + 1) * 4, attributes * 4))
            for dst, offset, nbytes in copies:
                err = copy(dst, src + offset, nbytes, stream)
                assert err == 0, f"cuMemcpyDtoDAsync failed with CUDA error {err}"
    return execute


def fake_trt(execute, max_batch, version="10.3.0", attributes=0):
    engine = FakeEngine(execute, max_batch, attributes)
    return SimpleNamespace(
        __version__=version, Logger=type("L", (), {"WARNING": 0, "__init__": lambda self, level: None}),
        Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda blob: engine),
        TensorIOMode=SimpleNamespace(INPUT="IN"), nptype=lambda t: np.float32, engine=engine)


class CountingCuda(ContextDepth):
    """The real pycuda.driver, counting allocations and context pushes/pops like FakeCuda does."""

    def __init__(self, drv):
        super().__init__(real_pop=drv.Context.pop)
        self._drv, self.allocs = drv, 0

    def __getattr__(self, name):
        return getattr(self._drv, name)

    def Device(self, i):
        dev = self._drv.Device(i)
        return SimpleNamespace(name=dev.name, compute_capability=dev.compute_capability,
                               retain_primary_context=lambda: self.Ctx(dev.retain_primary_context()))

    def mem_alloc(self, nbytes):
        self.allocs += 1
        return self._drv.mem_alloc(nbytes)


def real_cuda():
    """pycuda.driver with a GPU, or a skip that says which is missing."""
    drv = pytest.importorskip("pycuda.driver", reason="pycuda is not installed (pip install 'edgereid[trt]')")
    try:
        drv.init()
        if drv.Device.count() == 0:
            pytest.skip("no CUDA GPU")
    except drv.Error as exc:
        pytest.skip(f"CUDA is not usable here: {exc}")
    return CountingCuda(drv)


@pytest.fixture(params=["fake-cuda", "pycuda-gpu"])
def libs(request, monkeypatch):
    if request.param == "fake-cuda":
        cuda = FakeCuda()
        trt = fake_trt(fake_memory_network(cuda), max_batch=4)
    else:
        cuda = real_cuda()
        trt = fake_trt(gpu_copy_network(), max_batch=4)
    monkeypatch.setattr(tb, "_load_libs", lambda: (trt, cuda))
    return trt, cuda


@pytest.fixture()
def engine_file(tmp_path, libs):
    """An engine whose sidecar names the GPU the test runs on (the fake one or the real one)."""
    _, cuda = libs
    dev = cuda.Device(0)
    path = tmp_path / "m.engine"
    path.write_bytes(b"serialized")
    write_sidecar(path, make_sidecar(META, "10.3.0", dev.name(), tuple(dev.compute_capability()),
                                     optimization_profile(META, 1, 2, 4), "fp16"))
    return path


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


def test_each_call_times_its_copies_and_execution_with_stream_events(engine_file, libs):
    _, cuda = libs
    x = np.zeros((11, 3, 4, 2), np.float32)  # chunks of 4, 4, 3: three input copies, runs, 2 x 3 output copies
    with tb.TensorRTBackend(engine_file) as be:
        be.infer({"images": x})
        stages = dict(be.last_stage_times)
        be.infer({"images": x[:1]})  # the next call starts its own count
        single = dict(be.last_stage_times)
    assert list(stages) == ["host_to_device", "inference", "device_to_host"] == list(single)
    if isinstance(cuda, FakeCuda):
        ms = {k: 1e3 * v for k, v in stages.items()}
        assert ms == pytest.approx({"host_to_device": 3 * cuda.HTOD_MS, "inference": 3 * cuda.EXECUTE_MS,
                                    "device_to_host": 6 * cuda.DTOH_MS})
        assert 1e3 * single["inference"] == pytest.approx(cuda.EXECUTE_MS)
    else:
        assert all(v >= 0 for v in stages.values())


def test_runtime_reports_the_backends_stage_split(engine_file, libs):
    from edgereid import Runtime

    _, cuda = libs
    with Runtime(engine_file) as rt:
        _, stages = rt.infer_batch_timed([np.full((8, 4, 3), 100, np.uint8)] * 3)
    assert list(stages) == ["preprocess", "host_to_device", "inference", "device_to_host", "postprocess"]
    if isinstance(cuda, FakeCuda):
        assert 1e3 * stages["inference"] == pytest.approx(cuda.EXECUTE_MS)


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
        np.testing.assert_allclose(out["gender_logit"].ravel(), [1.0] * 3)


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


def test_engine_from_other_version_or_gpu_is_refused(engine_file, libs, monkeypatch):
    _, cuda = libs
    monkeypatch.setattr(tb, "_load_libs", lambda: (fake_trt(None, 4, version="10.4.1"), cuda))
    with pytest.raises(ModelVersionError, match="Rebuild"):
        tb.TensorRTBackend(engine_file)
    other = FakeCuda(name="Orin", cc=(8, 7))
    monkeypatch.setattr(tb, "_load_libs", lambda: (fake_trt(None, 4), other))
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


@pytest.mark.parametrize("gpu", [False, True], ids=["fake-cuda", "pycuda-gpu"])
def test_attribute_output_is_bound_by_name_through_the_runtime(tmp_path, monkeypatch, gpu):
    """An engine with a third output (attribute_logits, 2 columns): the backend returns it by name, split across
    profile-sized chunks, and the Runtime turns it into Output.attributes."""
    from edgereid.runtime import Runtime
    from edgereid.runtime.output import sigmoid

    cuda = real_cuda() if gpu else FakeCuda()
    trt = fake_trt(gpu_copy_network(2) if gpu else fake_memory_network(cuda, 2), max_batch=4, attributes=2)
    monkeypatch.setattr(tb, "_load_libs", lambda: (trt, cuda))
    meta = META.with_attributes(("hat", "bag"))
    dev = cuda.Device(0)
    path = tmp_path / "a.engine"
    path.write_bytes(b"serialized")
    write_sidecar(path, make_sidecar(meta, "10.3.0", dev.name(), tuple(dev.compute_capability()),
                                     optimization_profile(meta, 1, 2, 4), "fp16"))
    x = np.random.default_rng(1).standard_normal((6, 3, 4, 2)).astype(np.float32)
    with tb.TensorRTBackend(path) as be:
        assert be.metadata.output_names == ("embedding", "gender_logit", "attribute_logits")
        raw = be.infer({"images": x})
        np.testing.assert_allclose(raw["attribute_logits"], _model(x, 2)["attribute_logits"], rtol=1e-6)
        assert trt.engine.runs == [4, 2]
        with Runtime(be) as rt:  # crops -> preprocessing -> engine -> first-batch promise check -> Output
            assert rt.attribute_names == ("hat", "bag")
            crops = [np.full((8, 4, 3), v, np.uint8) for v in (0, 60, 120, 180, 240)]
            out = rt.infer(crops)
            want = sigmoid(_model(rt.preprocessor.prepare(crops), 2)["attribute_logits"])
    np.testing.assert_allclose(out.attributes, want, rtol=1e-6)
    assert out.attributes.shape == (5, 2) and out.attribute_names == ("hat", "bag")
