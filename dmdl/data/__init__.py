"""Dataset readers (RegDB, SYSU-MM01, LLCM), their checks and the toy dataset generator.

Names are imported on first use: the readers and :mod:`dmdl.data.check` need neither torch nor
the training code, so that the ``dmdl`` command checks a dataset before it loads them.
"""

from dmdl.lazy import lazy_attributes
from dmdl.modalities import INFRARED, MODALITIES, VISIBLE

from .records import ImageRecord, Problem

_LAZY = {
    "VIReIDDataset": "regdb", "build_camera_index": "regdb", "RegDB": "regdb", "REGDB_TRIALS": "regdb",
    "SYSUMM01": "sysu", "SYSU_RGB_CAMS": "sysu", "SYSU_IR_CAMS": "sysu", "SYSU_INDOOR_CAMS": "sysu",
    "read_id_list": "sysu",
    "LLCM": "llcm", "LLCM_VIS_CAMS": "llcm", "LLCM_NIR_CAMS": "llcm",
    "make_toy_dataset": "toy", "ensure_toy_dataset": "toy", "toy_default_root": "toy", "TOY_LAYOUTS": "toy",
}

__all__ = [
    "ImageRecord", "Problem", "VISIBLE", "INFRARED", "MODALITIES",
    "VIReIDDataset", "build_camera_index",
    "RegDB", "REGDB_TRIALS",
    "SYSUMM01", "SYSU_RGB_CAMS", "SYSU_IR_CAMS", "SYSU_INDOOR_CAMS", "read_id_list",
    "LLCM", "LLCM_VIS_CAMS", "LLCM_NIR_CAMS",
    "make_toy_dataset", "ensure_toy_dataset", "toy_default_root", "TOY_LAYOUTS",
]


__getattr__ = lazy_attributes(__name__, {name: f".{module}" for name, module in _LAZY.items()})
