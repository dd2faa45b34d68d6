"""OpenVINO INT8 on CPUs with and without VNNI: accuracy and images/s of each way to avoid 16-bit saturation.

    python benchmarks/bench_openvino_int8.py --fp32 model.onnx --int8 model.int8.onnx [model.int8.cpu.onnx ...]
        [--images DIR] [--speed-size 256x128] [--batches 1,8] [--seconds 2] [--threads 2]
        [-o benchmarks/results/openvino_int8_no_vnni.json]

Without VNNI, OpenVINO's u8 x i8 convolutions add products in pairs into saturating 16-bit sums. Each INT8 file
is compiled in several forms, all after edgereid's uint8 rewrite of signed activations:
- `saturating`: INT8 kernels everywhere (what OpenVINO does by itself);
- `f32_where_saturating`: the convolutions that could saturate run as float convolutions on their dequantized
  weights (edgereid's default, int8_kernels="exact");
- `seven_bit_where_saturating`: their weights halved onto -64..64 instead (NNCF's overflow fix);
- `f32_everywhere`: every quantized convolution in float (the dequantized graph);
- `zero_point_128`: the earlier rewrite (every int8 activation to uint8 with zero point 128, saturating).

Two workers run the same forms: one with OpenVINO's kernels as this CPU has them, one with ONEDNN_MAX_CPU_ISA=AVX2
(the AVX2 kernels a Zen 1-3 or a pre-Ice Lake Intel CPU runs, on this machine's cores: accuracy equal to qemu's
Zen 1 to the last digit in every form measured). Accuracy: cosine and gender agreement against the fp32 file on
OpenVINO f32, on the crops at the model's own input size. Speed: images/s with the model reshaped to
--speed-size, rounds alternating between every form, quoted against the fp32 file in the same worker.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench_openvino import person_crops
from bench_runtime import timed_rounds
from common import machine_line, write_result

from edgereid.retrieval.distances import row_cosine

FORMS = ("saturating", "f32_where_saturating", "seven_bit_where_saturating", "f32_everywhere", "zero_point_128")
ISA_CAPS = {"native": None, "avx2_no_vnni": "AVX2"}


def seven_bit_weights(model, convs: list) -> int:
    """Halve each convolution's int8 weights onto -64..64 and double their scale, in place (NNCF's overflow
    fix): no pair of u8 x i8 products exceeds 16 bits, at one bit of weight precision. Returns how many."""
    import openvino.opset13 as ops

    from edgereid.backends.openvino_int8 import constant_value, weight_zero_point

    for conv in convs:
        scale = constant_value(conv.scale_node.input_value(1).get_node())
        if scale is None or np.any(weight_zero_point(conv)):
            raise ValueError(f"{conv.name}: weights are not symmetric int8 with a constant scale")
        halved = np.clip(np.round(conv.weights.astype(np.float32) / 2), -64, 64).astype(np.int8)
        conv.weight_convert.input(0).replace_source_output(ops.constant(halved).output(0))
        conv.scale_node.input(1).replace_source_output(ops.constant((scale * 2).astype(scale.dtype)).output(0))
    if convs:
        model.validate_nodes_and_infer_types()
    return len(convs)


def compile_form(path: Path, form: str, threads: int, size: tuple | None = None):
    """(compiled model, info) of an edgereid ONNX file in `form` ('fp32' for a float file as it is)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    from edgereid.backends.openvino_int8 import compute_in_f32, quantized_convs, unsign_int8_activations

    core = ov.Core()
    model = core.read_model(str(path))
    info = {}
    if form != "fp32":
        info["unsigned"] = unsign_int8_activations(model, cap_nonnegative=form != "zero_point_128")[0]
        convs = quantized_convs(model)
        risky = [c for c in convs if c.can_saturate]
        info.update(convs=len(convs), could_saturate=len(risky),
                    could_saturate_mac_share=sum(c.macs for c in risky) / max(1, sum(c.macs for c in convs)))
        if form == "f32_where_saturating":
            compute_in_f32(model, risky)
        elif form == "seven_bit_where_saturating":
            seven_bit_weights(model, risky)
        elif form == "f32_everywhere":
            compute_in_f32(model, convs)
    name = model.inputs[0].get_any_name()
    shape = model.inputs[0].get_partial_shape()
    dims = [ov.Dimension()] + [shape[i] for i in range(1, 4)]
    if size is not None:
        dims[2], dims[3] = ov.Dimension(size[0]), ov.Dimension(size[1])
    model.reshape({name: ov.PartialShape(dims)})
    return core.compile_model(model, "CPU", {hints.inference_precision: ov.Type.f32,
                                             props.inference_num_threads: threads}), info


def worker(args) -> dict:
    """Accuracy and speed of every form of every INT8 file under this process's kernels."""
    import openvino as ov

    from edgereid.backends.cpu_features import describe_cpu_features
    from edgereid.backends.openvino_backend import model_props, onednn_isa_without_vnni, read_model
    from edgereid.imageio import read_images
    from edgereid.metadata import ModelMetadata
    from edgereid.runtime.preprocess import Preprocessor

    meta = ModelMetadata.from_props(model_props(read_model(ov.Core(), args.fp32)), source=str(args.fp32))
    if args.images:
        paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        crops = read_images(paths[:args.num_images])
    else:
        crops = person_crops(args.num_images, seed=1)
    x = Preprocessor(meta).prepare(crops)
    size = tuple(int(v) for v in args.speed_size.split("x"))
    batches = [int(b) for b in args.batches.split(",")]

    ref_model, _ = compile_form(args.fp32, "fp32", args.threads)
    ref = ref_model({meta.input_name: x})
    ref = {o.get_any_name(): ref[o] for o in ref_model.outputs}
    accuracy, infos, speed_models = {}, {}, {("fp32", "fp32"): compile_form(args.fp32, "fp32", args.threads, size)[0]}
    for path in args.int8:
        for form in FORMS:
            compiled, info = compile_form(path, form, args.threads)
            same_as_saturating = ((form == "zero_point_128" and not info["unsigned"])
                                  or (form.endswith("_where_saturating") and not info["could_saturate"]))
            if same_as_saturating:  # the graph would be the saturating form's: not measured twice
                continue
            got = compiled({meta.input_name: x})
            got = {o.get_any_name(): got[o] for o in compiled.outputs}
            e, r = got["embedding"], ref["embedding"]
            cos = row_cosine(e, r)
            accuracy[(path.name, form)] = {
                "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "embedding_max_abs": float(np.abs(e - r).max()),
                "gender_agreement": float(np.mean((got["gender_logit"] >= 0) == (ref["gender_logit"] >= 0))),
                "gender_logit_max_abs": float(np.abs(got["gender_logit"] - ref["gender_logit"]).max())}
            infos[(path.name, form)] = info
            speed_models[(path.name, form)] = compile_form(path, form, args.threads, size)[0]
    speed = {}
    rng = np.random.default_rng(0)
    for batch in batches:
        feed = rng.standard_normal((batch, 3, *size)).astype(np.float32)
        requests = {k: m.create_infer_request() for k, m in speed_models.items()}
        times = timed_rounds({k: (lambda r=r: r.infer({meta.input_name: feed})) for k, r in requests.items()},
                             args.seconds, warmup=2)
        base = float(np.median(times[("fp32", "fp32")]))
        for key, t in times.items():
            med = float(np.median(t))
            speed[(key, batch)] = {"images_per_s": batch / med, "vs_fp32": base / med, "calls": len(t)}
    rows = []
    for key in [("fp32", "fp32")] + [(p.name, f) for p in args.int8 for f in FORMS]:
        if key not in speed_models:
            continue
        for batch in batches:
            rows.append({"file": key[0], "form": key[1], "batch": batch, **speed[(key, batch)],
                         **accuracy.get(key, {}), **infos.get(key, {})})
    kernels = describe_cpu_features()
    if onednn_isa_without_vnni():
        kernels += (f"; OpenVINO capped by ONEDNN_MAX_CPU_ISA={os.environ['ONEDNN_MAX_CPU_ISA']}: its u8 x i8 "
                    f"kernels saturate (no VNNI)")
    return {"kernels": kernels, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "crops": len(x), "accuracy_input": f"{x.shape[2]}x{x.shape[3]}", "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True, help="the fp32 edgereid .onnx file")
    parser.add_argument("--int8", type=Path, nargs="+", required=True, help="INT8 Q/DQ .onnx files of that model")
    parser.add_argument("--images", type=Path, default=None, help="a folder of crops (default: synthetic crops)")
    parser.add_argument("--num-images", type=int, default=160)
    parser.add_argument("--speed-size", default="256x128", help="HxW the speed runs reshape the model to")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per form and batch size")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("-o", "--output",
                        default=str(Path(__file__).parent / "results" / "openvino_int8_no_vnni.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    import openvino as ov

    print(machine_line())
    workers = {}
    for label, isa in ISA_CAPS.items():
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa:
            env["ONEDNN_MAX_CPU_ISA"] = isa
        proc = subprocess.run([sys.executable, __file__, "--worker", *sys.argv[1:]], env=env, capture_output=True,
                              text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"worker {label} failed:\n{proc.stderr[-3000:]}")
        workers[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        for row in workers[label]["results"]:
            print(f"{label:13s} {row['file']:28s} {row['form']:27s} b{row['batch']:<2d} "
                  f"{row['images_per_s']:8.1f} img/s x{row['vs_fp32']:.2f} fp32  "
                  f"cos {row.get('cosine_mean', 1):.5f} (min {row.get('cosine_min', 1):.5f}) "
                  f"gender {row.get('gender_agreement', 1):.4f}")
    write_result(args.output, {
        "benchmark": "bench_openvino_int8",
        "command": "python benchmarks/bench_openvino_int8.py " + " ".join(sys.argv[1:]),
        "openvino": ov.__version__, "threads": args.threads, "speed_input": f"float32 NCHW {args.speed_size}",
        "timing": "median seconds per call, rounds alternating between every form; vs_fp32 within one worker",
        "workers": workers})


if __name__ == "__main__":
    main()
