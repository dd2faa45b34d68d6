"""Old home of the data-set readers, kept as an alias for a while: they now live in `edgereid.datasets`
(numpy only, no torch), where `edgereid eval` and parity use them too. `__all__` lists exactly what this
module imports."""
from edgereid.datasets import (
    REID_DATASETS,
    GenderRecord,
    ImageRecord,
    ReidSplits,
    load_attribute_table,
    load_cuhk03,
    load_dukemtmc,
    load_folder,
    load_gender_dataset,
    load_gender_list,
    load_market1501,
    load_msmt17,
    load_peta,
    load_reid_dataset,
    load_two_camera,
)

__all__ = [
    "REID_DATASETS", "GenderRecord", "ImageRecord", "ReidSplits", "load_attribute_table", "load_cuhk03",
    "load_dukemtmc", "load_folder", "load_gender_dataset", "load_gender_list", "load_market1501", "load_msmt17",
    "load_peta", "load_reid_dataset", "load_two_camera",
]
