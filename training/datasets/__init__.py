"""Data-set readers (Market-1501, DukeMTMC-reID, MSMT17, folder-per-id, gender lists); numpy only, no torch."""
from .dukemtmc import load_dukemtmc
from .folder import load_folder
from .gender import load_attribute_table, load_gender_dataset, load_gender_list
from .market1501 import load_market1501
from .msmt17 import load_msmt17
from .records import GenderRecord, ImageRecord, ReidSplits
from .registry import REID_DATASETS, load_reid_dataset

__all__ = [
    "GenderRecord", "ImageRecord", "ReidSplits", "REID_DATASETS", "load_reid_dataset", "load_market1501",
    "load_dukemtmc", "load_msmt17", "load_folder", "load_gender_list", "load_attribute_table",
    "load_gender_dataset",
]
