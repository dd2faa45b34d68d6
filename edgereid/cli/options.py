"""Options several commands share, declared once so their names, choices and help stay the same everywhere."""
from __future__ import annotations

import click

from edgereid.backends import SUFFIXES

BACKENDS = tuple(dict.fromkeys(SUFFIXES.values()))  # onnxruntime, torch, tensorrt, openvino


def backend_option(f):
    """--backend: which inference backend runs the model file (default: chosen from its suffix)."""
    return click.option("--backend", type=click.Choice(BACKENDS), default=None,
                        help="Default: chosen from the model file's suffix.")(f)


def threads_option(f):
    """--threads: the backend's CPU threads."""
    return click.option("--threads", type=int, default=None, help="CPU threads for the backend.")(f)


def max_batch_option(f):
    """--max-batch: crops per backend call."""
    return click.option("--max-batch", type=int, default=32, show_default=True,
                        help="Crops per backend call.")(f)


def runtime_options(f):
    """--max-batch, --backend and --threads, as `Runtime(...)` takes them."""
    return max_batch_option(backend_option(threads_option(f)))


def subset_names(text: str | None) -> list | None:
    """A comma-separated `--...-subsets A,B` value as names; None (every subset) when empty."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    return names or None


def dataset_option(name: str = "--dataset", default: str | None = "market1501", what: str = "the data folder"):
    """A re-ID layout choice (`name`), its choices the data-set registry's names and "auto", on every command."""
    from edgereid.datasets.registry import dataset_names

    def decorate(f):
        return click.option(name, type=click.Choice(dataset_names(with_auto=True)), default=default,
                            show_default=default is not None,
                            help=f"Re-ID layout of {what} (edgereid.datasets.registry); auto detects it from the "
                                 f"folder.")(f)

    return decorate
