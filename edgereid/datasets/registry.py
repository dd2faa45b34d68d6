"""Re-ID data sets by name, so the CLI and configs can say `--reid-dataset market1501`."""
from __future__ import annotations

from functools import partial

from edgereid.datasets.cuhk03 import load_cuhk03
from edgereid.datasets.dukemtmc import load_dukemtmc
from edgereid.datasets.folder import load_folder
from edgereid.datasets.market1501 import load_market1501
from edgereid.datasets.msmt17 import load_msmt17
from edgereid.datasets.peta_reid import load_peta_reid
from edgereid.datasets.records import ReidSplits
from edgereid.datasets.two_camera import load_two_camera
from edgereid.errors import DatasetError

REID_DATASETS = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "msmt17": load_msmt17,
    "folder": load_folder,
    "cuhk03": load_cuhk03,
    "viper": partial(load_two_camera, layout="viper"),
    "prid": partial(load_two_camera, layout="prid"),
    "grid": partial(load_two_camera, layout="grid"),
    "two_camera": load_two_camera,
    "peta": load_peta_reid,
}
# What `--dataset` / `--reid-dataset` offer on every command: the registry's names, and "auto" (the layout
# detected from the folder, edgereid.datasets.sources.detect_layout).
AUTO = "auto"
ALIASES = {"market": "market1501", "market-1501": "market1501", "duke": "dukemtmc", "dukemtmc-reid": "dukemtmc",
           "msmt": "msmt17"}


def dataset_names(with_auto: bool = False) -> tuple:
    """The re-ID layout names every command accepts, in registry order (with "auto" first when asked)."""
    return ((AUTO,) if with_auto else ()) + tuple(REID_DATASETS)


def canonical_name(name: str) -> str:
    """The registry's name for a layout name or alias; DatasetError listing the names for an unknown one."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REID_DATASETS:
        raise DatasetError(f"unknown re-ID data set {name!r}; choose one of {', '.join(sorted(REID_DATASETS))}.")
    return key


def load_reid_dataset(name: str, root, **kwargs) -> ReidSplits:
    """Load a re-ID data set by name (one of `dataset_names()`, or an alias) from `root`; "auto" detects the
    layout (edgereid.datasets.sources)."""
    if name.lower() == AUTO:
        from edgereid.datasets.sources import detect_layout

        name = detect_layout(root)
    return REID_DATASETS[canonical_name(name)](root, **kwargs)
