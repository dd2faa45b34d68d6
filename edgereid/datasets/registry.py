"""Re-ID data sets by name, so the CLI and configs can say `--reid-dataset market1501`."""
from __future__ import annotations

from edgereid.errors import DatasetError

from edgereid.datasets.dukemtmc import load_dukemtmc
from edgereid.datasets.folder import load_folder
from edgereid.datasets.market1501 import load_market1501
from edgereid.datasets.msmt17 import load_msmt17
from edgereid.datasets.records import ReidSplits

REID_DATASETS = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "msmt17": load_msmt17,
    "folder": load_folder,
}
ALIASES = {"market": "market1501", "market-1501": "market1501", "duke": "dukemtmc", "dukemtmc-reid": "dukemtmc",
           "msmt": "msmt17"}


def load_reid_dataset(name: str, root, **kwargs) -> ReidSplits:
    """Load a re-ID data set by name ("market1501", "dukemtmc", "msmt17", "folder") from `root`."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REID_DATASETS:
        raise DatasetError(f"unknown re-ID data set {name!r}; choose one of {', '.join(sorted(REID_DATASETS))}.")
    return REID_DATASETS[key](root, **kwargs)
