"""`edgereid quantize`: FP16 or INT8 (Q/DQ) ONNX from an fp32 edgereid ONNX file."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("quantize")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--fp16", "precision", flag_value="fp16", help="FP16 weights/activations (InstanceNorm kept fp32).")
@click.option("--int8", "precision", flag_value="int8", help="INT8 Q/DQ from a calibration set (--calib).")
@click.option("--calib", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Calibration set from `edgereid calibrate` (INT8).")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None,
              help="INT8 activation ranges: min-max, entropy (TensorRT's KL histogram), or a percentile of |x|; "
                   "every layer in INT8. Without --method (or --plan) the INT8 policy's default: each method's "
                   "all-INT8 file is scored on the calibration crops; of those reaching the targets the one "
                   "keeping most nearest neighbours is taken, else a per-layer sensitivity pass and a "
                   "mixed-precision plan.")
@click.option("--percentile", type=float, default=99.999, show_default=True, help="With --method percentile.")
@click.option("--target", type=click.Choice(["tensorrt", "cpu"]), default="tensorrt", show_default=True,
              help="INT8 activations: symmetric int8 (TensorRT) or uint8 (fastest in ONNX Runtime on x86).")
@click.option("--reduce-range", is_flag=True,
              help="7-bit INT8 weights: never saturates ONNX Runtime's fast kernels on x86 CPUs without VNNI, "
                   "at some accuracy on every CPU.")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Replay a saved INT8 plan (<output>.plan.json of an earlier run): the same file again.")
@click.option("--bias-correction", is_flag=True,
              help="Move each INT8 Conv's bias by its output's mean shift against fp32 on the calibration crops, "
                   "layer by layer (with --method or --plan).")
@click.option("--report", is_flag=True, help="Print the per-layer sensitivity table (and save it as "
                                             "<output>.sensitivity.json).")
@click.option("--target-cosine", type=float, default=None,
              help="Plan until the embedding cosine to fp32 on the calibration crops reaches this [0.995].")
@click.option("--target-attribute-agreement", type=float, default=None,
              help="Models with an attribute head: plan until this share of the attribute decisions on the "
                   "calibration crops equals fp32's too [0.99].")
@click.option("--max-float-share", type=float, default=None,
              help="At most this share of the Conv multiply-accumulates left in float [0.25].")
@click.option("--threads", type=int, default=None, help="CPU threads for the sensitivity pass.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def quantize(model, precision, calib, method, percentile, target, reduce_range, plan_file, bias_correction, report,
             target_cosine, target_attribute_agreement, max_float_share, threads, output) -> None:
    """Write an FP16 or INT8 version of MODEL (an fp32 .onnx from `edgereid export`)."""
    if precision is None:
        raise click.UsageError("choose --fp16 or --int8.")
    if precision == "fp16":
        from edgereid.calibration.fp16 import quantize_fp16

        path = quantize_fp16(model, output)
    else:
        if calib is None:
            raise click.UsageError("--int8 needs --calib DIR (build one with `edgereid calibrate`).")
        path = _int8(model, calib, output, method, percentile, target, reduce_range, plan_file, report,
                     target_cosine, max_float_share, threads, bias_correction, target_attribute_agreement)
    click.echo(f"wrote {path} ({precision}, {path.stat().st_size / 2**20:.1f} MiB)")


def _int8(model, calib, output, method, percentile, target, reduce_range, plan_file, report, target_cosine,
          max_float_share, threads, bias_correction=False, target_attribute_agreement=None) -> Path:
    from edgereid.calibration.int8_policy import DEFAULT_POLICY, quantize as policy_quantize

    if plan_file is not None or method is not None:
        if plan_file is not None and method is not None:
            raise click.UsageError("--plan already names the range method; drop --method.")
        if report or target_cosine is not None or max_float_share is not None or target_attribute_agreement is not None:
            raise click.UsageError("--report, --target-cosine, --target-attribute-agreement and --max-float-share "
                                   "shape the sensitivity pass, which runs only without --method and --plan.")
    elif bias_correction:
        # the sensitivity pass scores uncorrected files: a plan it chose is not known to hold once corrected
        raise click.UsageError("--bias-correction needs --method or --plan (the plan search does not use it).")
    if plan_file is not None:
        from edgereid.calibration.int8 import quantize_int8
        from edgereid.calibration.int8_plan import Int8Plan

        plan = Int8Plan.load(plan_file)
        click.echo(f"replaying {plan_file}: {plan.method} ranges, {len(plan.keep_float)} layers in float")
        return quantize_int8(model, calib, output, target=target, reduce_range=reduce_range, plan=plan,
                             bias_correction=bias_correction)
    # every other choice comes from the one INT8 policy; the options only change its fields
    changes = {"target": target, "reduce_range": reduce_range, "bias_correction": bias_correction}
    if method is not None:
        changes.update(plan=False, method=method, percentile=percentile)
    if target_cosine is not None:
        changes["target_cosine"] = target_cosine
    if max_float_share is not None:
        changes["max_float_share"] = max_float_share
    if target_attribute_agreement is not None:
        changes["target_attribute_agreement"] = target_attribute_agreement
    policy = DEFAULT_POLICY.with_(**changes)
    if not policy.plan:
        return policy_quantize(model, calib, output, policy).path
    from edgereid.atomic import write_json_atomic
    from edgereid.calibration import sensitivity as sens

    click.echo(f"choosing the INT8 plan on the calibration crops (range methods, then one layer at a time, "
               f"stopping once the cosine reaches {policy.target_cosine}):")
    result = policy_quantize(model, calib, output, policy, threads=threads, echo=click.echo, progress=True,
                             report=report)
    path, plan, rows, methods = result.path, result.plan, result.rows, result.method_scores
    label = sens.range_label(plan.method, plan.percentile)
    score = plan.calibration_score
    units = f"{len(plan.keep_float)} of {len(rows)} units" if rows else f"{len(plan.keep_float)} units"
    attrs = (f"; attribute agreement {score['attribute_agreement']:.4f}" if "attribute_agreement" in score else "")
    click.echo(f"plan: {label} ranges; {units} in float ({score['float_macs_share']:.1%} of the MACs); cosine to "
               f"fp32 on {score['images']} calibration crops: mean {score['cosine_mean']:.4f}, min "
               f"{score['cosine_min']:.4f}; top-{score['top_k']} agreement {score['top10_overlap']:.3f}{attrs} "
               f"({score['evaluations']} files scored)")
    for name, why in plan.reasons.items():
        click.echo(f"  float: {name}: {why}")
    click.echo(f"plan saved as {sens.plan_path(path)} (replay with --plan)")
    if report:
        click.echo(sens.sensitivity_table(rows, attributes="attribute_agreement" in score))
        side = path.with_name(path.stem + ".sensitivity.json")
        write_json_atomic(side, {"plan": plan.to_dict(), "range_methods": methods,
                                 "layers": [r.to_dict() for r in rows]})
        click.echo(f"sensitivity table saved as {side}")
    return path
