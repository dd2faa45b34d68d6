"""`edgereid bench`: latency percentiles, images/s, peak memory and a stage breakdown per batch size."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from edgereid.cli.options import backend_option

def parse_int_list(text: str, name: str, allow_auto: bool = False) -> list:
    """'1,2,4' -> [1, 2, 4]; 'auto' -> [None] where allowed (the backend picks its thread count)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if allow_auto and part.lower() == "auto":
            values.append(None)
            continue
        try:
            value = int(part)
        except ValueError:
            raise click.BadParameter(f"{text!r}: expected comma-separated integers such as 1,2,4"
                                     + (" or 'auto'" if allow_auto else ""), param_hint=name) from None
        if value < 1:
            raise click.BadParameter(f"{value} must be >= 1", param_hint=name)
        values.append(value)
    return values


def describe_cost(result) -> str:
    """'mobileone_s0 backbone, 0.198 GMACs per crop' from what the model's metadata records."""
    backbone = f"{result.backbone} backbone" if result.backbone else "backbone not recorded"
    gmacs = f"{result.gmacs:.3f} GMACs per crop" if result.gmacs is not None else "GMACs not recorded"
    return f"{backbone}, {gmacs}"


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch", "batches", default="1,2,4,8,16,32", show_default=True,
              help="Batch sizes, comma-separated.")
@click.option("--threads", default="auto", show_default=True,
              help="Backend CPU threads, comma-separated (e.g. 1,2); 'auto' lets the backend choose.")
@click.option("--warmup", type=int, default=20, show_default=True, help="Untimed calls before each configuration.")
@click.option("--iters", type=int, default=200, show_default=True, help="Timed calls per configuration.")
@click.option("--duration", type=float, default=None,
              help="Seconds per configuration instead of a fixed --iters count.")
@click.option("--images", type=click.Path(exists=True, path_type=Path), default=None,
              help="A folder of crop images: each call decodes them from disk (adds the decode stage). "
                   "Default: synthetic crops of varied sizes in memory.")
@backend_option
@click.option("--int8-kernels", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
              help="INT8 files on x86 CPUs without VNNI: exact (ONNX Runtime's U8U8 kernels; OpenVINO runs the "
                   "convs that could saturate in f32), or fast (saturating u8s8 kernels). No difference where the "
                   "CPU has VNNI.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every result (and the host description) to this JSON file.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def bench(model, batches, threads, warmup, iters, duration, images, backend, int8_kernels, json_out,
          progress) -> None:
    """Benchmark MODEL (.onnx, .xml, .engine or .pt) over batch sizes and thread counts."""
    from edgereid.atomic import write_json_atomic
    from edgereid.bench.machine import describe_machine, machine_line
    from edgereid.bench.runner import format_table, sweep
    from edgereid.imageio import IMAGE_SUFFIXES, list_images

    batch_list = parse_int_list(batches, "--batch")
    thread_list = parse_int_list(threads, "--threads", allow_auto=True)
    files = None
    if images is not None:
        files = [images]
        if images.is_dir():
            files = list_images(images)
        if not files:
            raise click.UsageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    click.echo(f"machine: {machine_line()}", err=True)
    options = {"int8_kernels": int8_kernels} if int8_kernels != "exact" else {}
    results = []
    for result in sweep(model, batch_list, thread_list, backend=backend, progress=progress, warmup=warmup,
                        iters=iters, duration=duration, files=files, runtime_options=options):
        results.append(result)
        click.echo(f"batch {result.batch:3d} threads {result.threads or 'auto'}: p50 {result.latency.p50_ms:8.2f} ms"
                   f"  {result.images_per_s:8.1f} img/s", err=True)
    click.echo(format_table(results))
    if results and (results[0].backbone or results[0].gmacs is not None):
        click.echo(f"model: {describe_cost(results[0])}")
    if results and results[0].int8_arithmetic:
        click.echo(f"int8: {results[0].int8_arithmetic}")
    if json_out:
        write_json_atomic(json_out, {
            "benchmark": "edgereid bench",
            "command": " ".join(["edgereid"] + sys.argv[1:]),
            "host": describe_machine(),
            "input": "files" if files else "synthetic crops",
            "results": [r.to_dict() for r in results],
        })
        click.echo(f"wrote {json_out}")
