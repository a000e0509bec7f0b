"""Dataset readers (RegDB, SYSU-MM01, LLCM) and the toy dataset generator."""

from .records import INFRARED, MODALITIES, VISIBLE, ImageRecord
from .regdb import REGDB_TRIALS, RegDB, VIReIDDataset, build_camera_index
from .sysu import SYSU_INDOOR_CAMS, SYSU_IR_CAMS, SYSU_RGB_CAMS, SYSUMM01, read_id_list
from .llcm import LLCM, LLCM_NIR_CAMS, LLCM_VIS_CAMS
from .toy import TOY_LAYOUTS, ensure_toy_dataset, make_toy_dataset, toy_default_root

__all__ = [
    "ImageRecord", "VISIBLE", "INFRARED", "MODALITIES",
    "VIReIDDataset", "build_camera_index",
    "RegDB", "REGDB_TRIALS",
    "SYSUMM01", "SYSU_RGB_CAMS", "SYSU_IR_CAMS", "SYSU_INDOOR_CAMS", "read_id_list",
    "LLCM", "LLCM_VIS_CAMS", "LLCM_NIR_CAMS",
    "make_toy_dataset", "ensure_toy_dataset", "toy_default_root", "TOY_LAYOUTS",
]
