"""Losses of DMDL and MULT (docs/dmdl.md#A4.3-#A4.4, #A5.4-#A5.5, #A6, #A7, #A8, docs/mult.md#B4).

One module per loss: :mod:`.triplet` (batch-hard triplet loss and the λ_tri(e) schedules of the two
DMDL stages), :mod:`.soft_ce` (soft-target cross-entropy), :mod:`.mmd` (the multi-kernel MMD
feature-alignment loss L_fa, docs/dmdl.md#A7.3), :mod:`.cai` (the CAI backdoor-adjusted loss L_cai, docs/dmdl.md#A6),
:mod:`.refinement` (the two pieces of the label-level CBT refinement: the top-k-truncated
prediction P̂, docs/dmdl.md#A4.3, and the refined targets ỹ, docs/dmdl.md#A7.2) and :mod:`.oclr` (MULT's OCLR term, docs/mult.md#B4).
This package only re-exports them.
"""

from .cai import cai_loss, cai_loss_from_logits
from .mmd import mmd_loss
from .oclr import oclr_loss
from .refinement import refined_targets, topk_prediction
from .soft_ce import soft_cross_entropy
from .triplet import triplet_loss, triplet_weight

__all__ = [
    "triplet_loss",
    "soft_cross_entropy",
    "triplet_weight",
    "mmd_loss",
    "cai_loss",
    "cai_loss_from_logits",
    "topk_prediction",
    "refined_targets",
    "oclr_loss",
]
