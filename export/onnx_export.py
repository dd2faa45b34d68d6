"""torch -> ONNX for the dual-head model: dynamic batch, named outputs, optional fused preprocessing."""
from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from edgereid._optional import require
from edgereid.metadata import ATTRIBUTE_OUTPUT, ModelMetadata

from edgereid.export.metadata import save_onnx, set_metadata
from edgereid.export.simplify import simplify_checked

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("embedding", "gender_logit")  # every model's; an attribute head adds ATTRIBUTE_OUTPUT third
DEFAULT_OPSET = 17


def output_names(model) -> tuple:
    """The graph outputs of `model` in export order: embedding first (trackers read output 0), then gender, then the
    attribute logits when the model has an attribute head."""
    return OUTPUT_NAMES + ((ATTRIBUTE_OUTPUT,) if getattr(model, "attribute_names", ()) else ())


def export_metadata(model, **overrides) -> ModelMetadata:
    """The model contract of `model` for its ONNX file (`model_metadata`: the attribute head's names and the backbone
    included), with the GMACs per crop of the deployed (re-parameterised) graph at the file's input size. The
    weights hash is that of the model as trained (its checkpoint's), also when the file holds fused weights."""
    from edgereid.training.checkpoint import model_metadata
    from edgereid.training.complexity import model_gmacs

    meta = model_metadata(model, **overrides)
    return meta.with_(gmacs=model_gmacs(model, (meta.height, meta.width)))


def _fused_wrapper(model, meta: ModelMetadata, reparameterize: bool = True, remove_offsets: bool = True):
    """uint8 NHWC BGR in -> cast, BGR->RGB, NCHW, (x/255 - mean)/std -> model: the edge host only resizes."""
    torch = require("torch")
    from edgereid.training.model import ExportWrapper

    class FusedPreprocessing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = ExportWrapper(model, reparameterize, remove_offsets)
            mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
            # One multiply-add after the cast: x * 1/(255 std) - mean/std.
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", -mean / std)

        def forward(self, images):
            x = images.permute(0, 3, 1, 2).to(torch.float32)
            x = torch.flip(x, dims=[1])  # BGR -> RGB
            return self.inner(x * self.scale + self.shift)

    return FusedPreprocessing()


def export_onnx(model, out_path: str | os.PathLike, fuse_preprocessing: bool = False, simplify: bool = True,
                opset: int = DEFAULT_OPSET, verify: bool = True, atol: float = 1e-4,
                remove_offsets: bool = True) -> Path:
    """Export a DualHeadReID to ONNX with edgereid metadata; returns the written path.

    A MobileOne model is exported re-parameterised (one conv per block, `model.reparameterize()`; `model` itself
    keeps its branches), with the offset a MobileOne trained with `identity_shift` keeps in its activations taken
    out (`remove_offsets`, the same function: training/mobileone.remove_offsets_), so its FP16 and INT8 files
    round the signal rather than the offset; `remove_offsets=False` keeps the plain fused graph (a few percent
    faster on a CPU). The simplified graph is checked against the unsimplified one (and both against PyTorch
    when `verify`, the fused copy against the model as trained too); a simplification that changes outputs is
    discarded with a warning.
    """
    torch = require("torch")
    onnx = require("onnx")
    from edgereid.training.model import ExportWrapper

    model = model.eval()
    meta = export_metadata(model)
    names = output_names(model)
    h, w = meta.height, meta.width
    if fuse_preprocessing:
        meta = meta.with_(input_layout="NHWC", input_dtype="uint8", color_order="BGR", normalize_in_graph=True)
        dummy = torch.randint(0, 256, (2, h, w, 3), dtype=torch.uint8)
    else:
        dummy = torch.randn(2, 3, h, w)

    def wrap(reparameterize: bool):
        return (_fused_wrapper(model, meta, reparameterize, remove_offsets) if fuse_preprocessing
                else ExportWrapper(model, reparameterize, remove_offsets)).eval()

    wrapper = wrap(True)

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that InstanceNorm exports with use_input_stats; that is exactly
        # IBN's inference behaviour (no running stats), so the warning is noise for this model.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (dummy,), buffer, dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(names),
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *names)},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    probe = _probe_input(meta, batch=3)
    simplified = simplify_checked(proto, {INPUT_NAME: probe}, atol=atol) if simplify else proto
    # what happened, not what was asked: simplify_checked hands back the original graph when it declines
    meta = meta.with_(extra={**meta.extra, "opset": opset, "simplified": simplified is not proto,
                             **offsets_extra(wrapper)})
    proto = simplified
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    if verify:
        # a fused MobileOne is checked against its training graph on every export, not only in the tests
        trained = wrap(False) if getattr(model, "reparameterizable", False) else None
        _verify_against_torch(proto, wrapper, probe, atol, names, trained=trained)
    return save_onnx(proto, out_path)


def offsets_extra(wrapper) -> dict:
    """{"offsets_removed": N} when the deployed graph reads and writes N MobileOne blocks' activations without
    their offset (training/mobileone.remove_offsets_), else nothing: older files and other models keep their
    metadata as it was."""
    from edgereid.training.mobileone import FloorReLU

    count = sum(isinstance(m, FloorReLU) for m in wrapper.modules())
    return {"offsets_removed": count} if count else {}


def _probe_input(meta: ModelMetadata, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if meta.normalize_in_graph:
        return rng.integers(0, 256, (batch, meta.height, meta.width, 3), dtype=np.uint8)
    return rng.standard_normal((batch, 3, meta.height, meta.width)).astype(np.float32)


# Fused vs training graph: the fused kernels are rounded to float32 (~6e-8 relative), which a deep BN network
# amplifies up to ~1e-4 of an output's scale (measured on untrained MobileOnes); a wrong fusion is off by O(1).
FUSION_RTOL = 1e-3


def _verify_against_torch(proto, wrapper, probe: np.ndarray, atol: float, names: tuple = OUTPUT_NAMES,
                          trained=None) -> None:
    """Run the exported graph in ONNX Runtime and compare every output (`names`, in the wrapper's order) with
    PyTorch on a probe batch; with `trained` (the wrapper of the unfused model) also the fused graph with it."""
    torch = require("torch")
    ort = require("onnxruntime")
    from edgereid.errors import EdgereidError

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip(names, session.run(list(names), {INPUT_NAME: probe})))
    with torch.no_grad():
        want = dict(zip(names, (t.numpy() for t in wrapper(torch.from_numpy(probe)))))
        ref = dict(zip(names, (t.numpy() for t in trained(torch.from_numpy(probe))))) if trained else {}
    for name in names:
        err = float(np.abs(got[name] - want[name]).max())
        # float32 rounding grows with the output's size: a logit of a few hundred (an untrained or very
        # confident head) differs by more than 1e-4 between two correct runtimes
        limit = atol * max(1.0, float(np.abs(want[name]).max()))
        if err > limit:
            raise EdgereidError(f"exported ONNX output {name!r} differs from PyTorch by {err:.2e} (> {limit:.2e}); "
                                f"try another --opset or --no-simplify and report the model config.")
        log.info("export check: %s max abs error %.2e", name, err)
        if name in ref:
            scale = max(1.0, float(np.abs(ref[name]).max()))
            fused_err = float(np.abs(want[name] - ref[name]).max())
            if fused_err > FUSION_RTOL * scale:
                raise EdgereidError(f"the re-parameterised model's output {name!r} differs from the trained "
                                    f"(multi-branch) model by {fused_err:.2e} (> {FUSION_RTOL} x {scale:.3g}); "
                                    f"report the model config (backbone, instance_norm).")
            log.info("export check: %s fused vs trained max abs error %.2e", name, fused_err)
