"""DMDL's config section (its keys on the command line: ``--cai false``, ``--lambda-fa 0.5``, ...).

Defaults are DMDL's published values for RegDB (docs/dmdl.md#A1, #A3-#A8) unless a preset says
otherwise. No torch import here: the ``dmdl`` command validates a config before it loads torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmdl.config import Config, MethodConfig, at_least, one_of, parse_schedule, register_method_config


@register_method_config
@dataclass
class DMDLConfig(MethodConfig):
    """The DMDL method's own settings (``method: dmdl``, the default)."""

    name = "dmdl"
    method_class = "dmdl.methods.dmdl.method:DMDL"

    # memory (docs/dmdl.md#A4.1, #A8)
    temperature: float = 0.05
    momentum: float = 0.2

    # losses (docs/dmdl.md#A4.4, #A5.5, #A8): lambda_tri(e) as "first_epoch:weight,..."
    triplet_margin: float = 0.3
    stage1_triplet: str = "0:0,16:0.25,26:0.5,36:1"
    stage2_triplet: str = "0:0,11:0.5,21:1"

    # augmentation (docs/dmdl.md#A3): timm pixel-mode RandomErasing max area per stage
    erasing_max_area: float = 0.5
    erasing_max_area_stage2: float = 0.5  # RegDB stage 2: 0.6

    # pseudo-labels of stage 2 (docs/dmdl.md#A5.1, #A5.2)
    k1_mapped: int = 0  # stage 2: k1 of the mapped modality (SYSU/LLCM 15); 0 = k1 for both (RegDB)
    association: str = "imca"  # "imca", "hungarian", "ot" or "mult" (MULT's label transfer)
    matching: str = "cluster"  # "cluster": the association every epoch; "regdb-cycle": sample-level on epoch % 5 >= 2
    cross_weight: float = 0.0  # weight of a non-DMDL stage-2 cross-memory term (0 = off; PGM: 0.25)
    cross_memory: str = "anchor"  # "anchor": PGM's mapped-vs-anchor memory; "shared": RGB+IR centroids

    # DMDL modules (docs/dmdl.md#A3, #A6, #A7): each switchable for the ablations (Table 3)
    cai: bool = True  # CAI backdoor-adjusted loss in stage 2 (docs/dmdl.md#A6)
    lambda_cai: float = 0.5
    cbt_data: bool = True  # infrared second view = pseudo-colour (else a second ChannelAdapGray view)
    cbt_label: bool = True  # GMM certainty + swapped top-k refined targets + adaptive shared memory
    cbt_feature: bool = True  # MMD between the two views of each modality (docs/dmdl.md#A7.3)
    lambda_fa: float = 1.0
    refine_from_stage1: int = 30  # first stage-1 epoch with certainty/refinement (RegDB: never)
    refine_from_stage2: int = 5  # first stage-2 epoch using the refined targets
    topk_stage1: int = 3
    topk_stage2: int = 10
    certainty_per_cluster: bool = True  # per-cluster GMMs (SYSU/LLCM) or one global (RegDB)
    certainty_loss: str = "prob"  # GMM input: "prob" (the code's -p) or "log" (the paper's Eq. 10, -log p)
    swap_predictions: bool = True  # False: each view's own prediction ("w/o exchange", Fig. 5)
    adaptive_momentum: bool = True  # shared memory eta_x = 0.2/max(q, 0.2); False: fixed `momentum`
    inter_modality_from: int = 25  # first stage-2 epoch with paired-identity batches (-1: never)
    # the paired sampler's identity groups: "replay" (drawn once per epoch and replayed on every pass
    # of the loader, as the released sampler) or "redraw" (fresh groups on every pass)
    inter_sampler: str = "replay"

    def check(self, cfg: Config) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for key in ("stage1_triplet", "stage2_triplet"):
            parse_schedule(getattr(self, key), key)
        for key in ("erasing_max_area", "erasing_max_area_stage2"):
            if not 0.02 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be in [0.02, 1], got {getattr(self, key)}")
        at_least(self, 0, "k1_mapped", "lambda_cai", "lambda_fa", "cross_weight")
        at_least(self, 1, "topk_stage1", "topk_stage2")
        one_of(self, "association", ("imca", "hungarian", "ot", "mult"))
        one_of(self, "matching", ("cluster", "regdb-cycle"))
        one_of(self, "cross_memory", ("anchor", "shared"))
        one_of(self, "certainty_loss", ("prob", "log"))
        one_of(self, "inter_sampler", ("replay", "redraw"))

    def unread(self, section: str) -> str | None:
        if section == "transfer" and self.association != "mult":
            return f"the label transfer runs with --association mult; this run's association is {self.association}"
        return None


__all__ = ["DMDLConfig"]
