"""Data-set readers (Market-1501, DukeMTMC-reID, MSMT17, CUHK03, VIPeR / PRID / GRID, folder-per-id, gender
lists and tables, PETA's Label.txt files); numpy only, no torch."""
from edgereid.datasets.cuhk03 import load_cuhk03
from edgereid.datasets.dukemtmc import load_dukemtmc
from edgereid.datasets.folder import load_folder
from edgereid.datasets.gender import load_attribute_table, load_gender_dataset, load_gender_list
from edgereid.datasets.market1501 import load_market1501
from edgereid.datasets.msmt17 import load_msmt17
from edgereid.datasets.peta import load_peta
from edgereid.datasets.records import GenderRecord, ImageRecord, ReidSplits
from edgereid.datasets.registry import REID_DATASETS, load_reid_dataset
from edgereid.datasets.two_camera import load_two_camera

__all__ = [
    "GenderRecord", "ImageRecord", "ReidSplits", "REID_DATASETS", "load_reid_dataset", "load_market1501",
    "load_dukemtmc", "load_msmt17", "load_folder", "load_gender_list", "load_attribute_table",
    "load_gender_dataset", "load_cuhk03", "load_two_camera", "load_peta",
]
