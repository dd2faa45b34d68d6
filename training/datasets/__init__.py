"""Old home of the data-set readers, kept as an alias for a while: they now live in `edgereid.datasets`
(numpy only, no torch), where `edgereid eval` and parity use them too."""
from edgereid.datasets import (  # noqa: F401
    REID_DATASETS,
    GenderRecord,
    ImageRecord,
    ReidSplits,
    __all__,
    load_attribute_table,
    load_dukemtmc,
    load_folder,
    load_gender_dataset,
    load_gender_list,
    load_market1501,
    load_msmt17,
    load_reid_dataset,
)
