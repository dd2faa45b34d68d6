"""`edgereid import-model` on an OpenVINO IR (.xml + .bin): the same checks as for ONNX (`export.import_model`),
with OpenVINO's own ops: the batch made dynamic by `reshape`, the other outputs dropped by building the model on the
embedding's result alone, L2 normalisation added as NormalizeL2 (eps 1e-12, max mode: a zero row stays finite),
the metadata written into the IR's rt_info 'edgereid' section, where `OpenVINOBackend` reads it."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgereid._optional import require
from edgereid.backends.openvino_backend import model_props, read_model, set_model_metadata
from edgereid.backends.openvino_convert import save_ir
from edgereid.errors import ModelFileError

from edgereid.export.import_model import (EMBEDDING, L2_EPS, ImportResult, check_nchw_dims, check_norms, file_sha256,
                                          import_metadata, probe_crops, refuse_edgereid_props)

log = logging.getLogger(__name__)


def _check_input(model, height: int, width: int, source: Path):
    """The one image input (f32, NCHW, 3 channels at HxW); returns (parameter, batch was fixed)."""
    ov = require("openvino")
    params = model.get_parameters()
    if len(params) != 1:
        names = ", ".join(p.get_friendly_name() for p in params)
        raise ModelFileError(f"{source} has {len(params)} inputs ({names}); an edgereid model takes one image batch.")
    param = params[0]
    name = param.output(0).get_any_name()
    if param.get_element_type() != ov.Type.f32:
        raise ModelFileError(f"{source}: input {name!r} is {param.get_element_type().get_type_name()}; edgereid feeds "
                             f"f32 NCHW images normalised by --mean/--std. Convert the network without fused "
                             f"preprocessing (ovc without --input ...[u8]).")
    shape = param.get_partial_shape()
    dims = ([] if shape.rank.is_dynamic else
            [None if shape[i].is_dynamic else shape[i].get_length() for i in range(shape.rank.get_length())])
    check_nchw_dims(dims, str(shape), name, height, width, source, verb="convert")
    try:
        model.reshape({name: ov.PartialShape([ov.Dimension(), 3, height, width])})
    except RuntimeError as exc:  # OpenVINO raises plain RuntimeErrors
        raise ModelFileError(f"{source}: OpenVINO cannot give input {name!r} a dynamic batch at {height}x{width} "
                             f"({str(exc).splitlines()[0][:160]}); the graph fixes its batch inside. Convert it "
                             f"again from a source with a dynamic batch.") from exc
    return param, dims[0] is not None


def _choose_output(model, wanted: str | None, source: Path):
    """The output port of the embedding: the one named `wanted` (any of its tensor names), or the only one."""
    outputs = list(model.outputs)
    listed = ", ".join(f"{o.get_any_name()} {o.get_partial_shape()}" for o in outputs)
    if wanted is not None:
        found = [o for o in outputs if wanted in o.get_names()]
        if not found:
            raise ModelFileError(f"{source} has no output {wanted!r}; its outputs are {listed}. Pass one of them to "
                                 f"--embedding-output.")
        return found[0]
    if len(outputs) != 1:
        raise ModelFileError(f"{source} has {len(outputs)} outputs ({listed}); name the re-ID embedding with "
                             f"--embedding-output NAME (the others are dropped).")
    return outputs[0]


def _run(model, input_name: str, x: np.ndarray, source: Path) -> np.ndarray:
    """The model's first output on a batch, compiled on the CPU at f32 (never OpenVINO's bf16 default)."""
    ov = require("openvino")
    import openvino.properties.hint as hints

    try:
        compiled = ov.Core().compile_model(model, "CPU", {hints.inference_precision: ov.Type.f32})
        return np.asarray(compiled.create_infer_request().infer({input_name: x})[compiled.output(0)])
    except RuntimeError as exc:
        raise ModelFileError(f"{source} does not run in OpenVINO on a batch of {len(x)} "
                             f"({str(exc).splitlines()[0][:200]}).") from exc


def _embeddings(model, input_name: str, x: np.ndarray, source: Path, output: str) -> np.ndarray:
    emb = _run(model, input_name, x, source)
    if emb.ndim != 2 or emb.shape[0] != len(x):
        raise ModelFileError(f"{source}: output {output!r} has shape {list(emb.shape)} for a batch of {len(x)}; an "
                             f"embedding is (batch, D). Pick the flattened feature with --embedding-output.")
    one = _run(model, input_name, x[:1], source)
    if one.shape != (1, emb.shape[1]) or not np.allclose(one[0], emb[0], rtol=1e-3, atol=1e-4):
        raise ModelFileError(f"{source}: the first image's embedding changes with the batch it runs in; the graph "
                             f"mixes the images of a batch.")
    return emb


def _precision(model, source: Path) -> str:
    ov = require("openvino")
    types = [op.get_type_name() for op in model.get_ordered_ops()]
    if "FakeQuantize" in types or "FakeConvert" in types:
        raise ModelFileError(f"{source} is already quantized (FakeQuantize); import the fp32 network and let "
                             f"`edgereid quantize --int8` make the INT8 file.")
    halves = [op for op in model.get_ordered_ops()
              if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f16]
    return "fp16" if halves else "fp32"


def import_openvino(src: Path, dst: Path, height: int, width: int, mean: tuple, std: tuple, color: str, units: str,
                    embedding_output: str | None, normalized: str, interpolation: str) -> ImportResult:
    """`export.import_model.import_model` for an OpenVINO IR (arguments already checked and in 0..1 units)."""
    ov = require("openvino")
    import openvino.opset13 as ops

    from edgereid.runtime.preprocess import Preprocessor

    if not src.with_suffix(".bin").is_file():
        raise ModelFileError(f"{src}: its weights {src.with_suffix('.bin').name} are missing; an OpenVINO IR is the "
                             f".xml and the .bin side by side.")
    model = read_model(ov.Core(), src)
    refuse_edgereid_props(model_props(model), src)
    param, fixed_batch = _check_input(model, height, width, src)
    input_name = param.output(0).get_any_name()
    port = _choose_output(model, embedding_output, src)
    source_output = port.get_any_name()
    dropped = [o.get_any_name() for o in model.outputs if o.get_any_name() != source_output]
    precision = _precision(model, src)
    # the model on the embedding alone: the other outputs' branches go with their results
    source = port.get_node().input_value(0)  # what the Result reads
    single = ov.Model([ops.result(source)], [param], model.get_friendly_name() or src.stem)
    probe_meta = import_metadata(input_name, height, width, color, mean, std, interpolation, 1, src, "", precision, {})
    x = Preprocessor(probe_meta).prepare(probe_crops(height, width))
    raw = _embeddings(single, input_name, x, src, source_output).astype(np.float32)
    norms, add_l2 = check_norms(raw, normalized, src)
    dim = raw.shape[1]
    if add_l2:
        head = ops.normalize_l2(source, ops.constant(np.array([1], np.int64)), eps=L2_EPS, eps_mode="max",
                                name="edgereid_l2/NormalizeL2")
        out = head.output(0)
    else:
        out = source
    # tensor names are unique in a model: the raw tensor gives up `embedding` if it had it
    if add_l2 and EMBEDDING in source.get_names():
        source.get_tensor().set_names({n for n in source.get_names() if n != EMBEDDING} or {"embedding_unnormalized"})
    out.get_tensor().set_names({EMBEDDING})
    result = ops.result(out)
    result.set_friendly_name(EMBEDDING)
    final = ov.Model([result], [param], model.get_friendly_name() or src.stem)
    got = _embeddings(final, input_name, x, src, EMBEDDING)
    want = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), L2_EPS) if add_l2 else raw
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ModelFileError(f"{src}: the imported IR's embedding differs from the network's own by "
                             f"{float(np.abs(got - want).max()):.2e}; please report this network's ops.")
    extra = {"source_output": source_output, "source_input": input_name, "normalization": "added" if add_l2 else "own",
             "row_norms": [round(norms[0], 6), round(norms[1], 6)], "dropped_outputs": dropped,
             "batch_made_dynamic": fixed_batch, "units": units, "openvino_version": ov.__version__}
    meta = import_metadata(input_name, height, width, color, mean, std, interpolation, dim, src,
                           file_sha256(src, src.with_suffix(".bin")), precision, extra)
    set_model_metadata(final, meta)
    save_ir(final, dst)
    log.info("imported %s -> %s: %d-d embedding, L2 %s", src, dst, dim, "added" if add_l2 else "own")
    return ImportResult(dst, meta, add_l2, norms, source_output, dropped, fixed_batch)
