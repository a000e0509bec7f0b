"""Evaluation: test protocols (query/gallery construction), metrics, and the model runner.

- :mod:`dmdl.evaluation.metrics`: ``eval_sysu``, ``eval_llcm``, ``eval_regdb`` (CMC, mAP, mINP).
- :mod:`dmdl.evaluation.protocols`: SYSU-MM01 / RegDB / LLCM query and gallery lists.
- :mod:`dmdl.evaluation.runner`: feature extraction and the full protocol for a model.
"""

from .metrics import eval_llcm, eval_regdb, eval_sysu
from .protocols import llcm_query_gallery, regdb_query_gallery, sysu_query_gallery

__all__ = [
    "eval_sysu",
    "eval_llcm",
    "eval_regdb",
    "sysu_query_gallery",
    "regdb_query_gallery",
    "llcm_query_gallery",
]
