"""`edgereid` entry point: a click group whose commands are imported only when invoked."""
from __future__ import annotations

import importlib
import sys

import click

from edgereid._version import __version__
from edgereid.errors import EdgereidError

# command name -> "module:function". Importing a command module must stay cheap (no torch/onnx
# at module level), but loading lazily keeps `edgereid --help` fast as the list grows.
COMMANDS = {
    "export": "edgereid.cli.export_cmd:export",
    "infer": "edgereid.cli.infer_cmd:infer",
    "eval": "edgereid.cli.eval_cmd:eval_command",
    "search": "edgereid.cli.search_cmd:search",
    "train": "edgereid.cli.train_cmd:train",
    "adapt": "edgereid.cli.adapt_cmd:adapt",
    "fit-attributes": "edgereid.cli.fit_attributes_cmd:fit_attributes",
    "fit-cameras": "edgereid.cli.fit_cameras_cmd:fit_cameras",
    "quickstart": "edgereid.cli.quickstart_cmd:quickstart",
    "bench": "edgereid.cli.bench_cmd:bench",
    "calibrate": "edgereid.cli.calibrate_cmd:calibrate",
    "quantize": "edgereid.cli.quantize_cmd:quantize",
    "qat": "edgereid.cli.qat_cmd:qat",
    "tune-int8": "edgereid.cli.tune_int8_cmd:tune_int8",
    "build-engine": "edgereid.cli.build_engine_cmd:build_engine",
    "convert-openvino": "edgereid.cli.openvino_cmd:convert_openvino",
    "parity": "edgereid.cli.parity_cmd:parity",
    "import-model": "edgereid.cli.import_model_cmd:import_model",
    "convert-checkpoint": "edgereid.cli.convert_checkpoint_cmd:convert_checkpoint",
}

# One-line help shown by `edgereid --help` without importing the command module.
SHORT_HELP = {
    "export": "Export a checkpoint (or a random-init smoke model) to ONNX with metadata.",
    "infer": "Embeddings and gender for image crops with any model file.",
    "eval": "CMC / mAP (optionally re-ranked) on a re-ID data set, plus a gender report.",
    "search": "Nearest gallery crops of query images, as text and a PNG/HTML grid.",
    "train": "Train the dual-head model (re-ID + gender batches interleaved, one optimizer per task).",
    "adapt": "Adapt a checkpoint to a site from its unlabeled crops (AdaBN + clustered pseudo-identities).",
    "fit-attributes": "Fit a checkpoint's attribute layer again on labelled crops, on its tap or another one.",
    "fit-cameras": "Each camera's mean embedding on a site's crops, to centre embeddings per camera.",
    "quickstart": "End to end on CPU: synthetic data, training, ONNX, FP16/INT8, evaluation, search, a report.",
    "bench": "Latency percentiles, images/s, peak memory and stage times per batch size.",
    "calibrate": "Build an INT8 calibration set (preprocessed like the model's runtime) with a manifest.",
    "quantize": "FP16 or INT8 (Q/DQ, per-channel symmetric) ONNX from an fp32 edgereid ONNX file.",
    "qat": "Fine-tune a MobileOne checkpoint so that its INT8 file answers like it (quantization-aware).",
    "tune-int8": "Tune an INT8 file's weights, biases and activation scales so that it answers like its fp32 file.",
    "build-engine": "TensorRT engine (8.6 / 10.x / 11.x) from any edgereid ONNX file, with a JSON sidecar.",
    "convert-openvino": "OpenVINO IR (.xml + .bin) from any edgereid ONNX file, with the metadata inside.",
    "parity": "Checkpoint (or fp32 file) vs ONNX/engine files: errors, cosine, rank-1/mAP deltas; exit 1 on fail.",
    "import-model": "A foreign re-ID network (.onnx / OpenVINO .xml) as an edgereid model: metadata, L2, checks.",
    "convert-checkpoint": "Rewrite a checkpoint of an older edgereid so that it loads without unpickling code.",
}


class LazyGroup(click.Group):
    """A group that lists COMMANDS and imports one only when it is run or asked for help."""

    def list_commands(self, ctx: click.Context) -> list:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # `edgereid --help` shows the short help without importing every command module.
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgereid")
def cli() -> None:
    """edgereid: re-ID embeddings and gender from one model, PyTorch to the edge.

    Start with `edgereid quickstart`; `edgereid COMMAND --help` describes each command, README.md and docs/
    the workflow.
    """


def main(argv: list | None = None) -> None:
    """Run the CLI, turning edgereid errors into one clear line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="edgereid", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except EdgereidError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
