"""MULT's config section (its keys on the command line: ``--mult-beta 0.7``, ``--lambda-oclr 1``, ...).

Defaults are MULT's released settings (docs/mult.md#B, #B4-#B5); the label transfer's own
keys (``mult_alpha``, ``mult_lambda``, ``cross_affinity``, ``cross_k``) are the shared ``transfer``
section, which DMDL's ``association: mult`` reads too. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmdl.config import Config, MethodConfig, register_method_config


@register_method_config
@dataclass
class MULTConfig(MethodConfig):
    """The MULT method's own settings (``method: mult``)."""

    name = "mult"
    method_class = "dmdl.methods.mult.method:MULT"
    resize = "bilinear"  # torchvision's Resize default, which MULT's code uses for clustering and test images

    temperature: float = 0.05  # of every memory (docs/mult.md#B4)
    momentum: float = 0.1  # of every memory (docs/mult.md#B4)
    mult_beta: float = 0.7  # soft labels: beta onehot(argmax y) + (1 - beta) y (docs/mult.md#B3.6)
    oclr_sharpen: float = 0.2  # OCLR target temperature (docs/mult.md#B4)
    lambda_oclr: float = 1.0  # weight of L_oclr (1 in MULT)

    def check(self, cfg: Config) -> None:
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.mult_beta <= 1.0:
            raise ValueError(f"mult_beta must be in [0, 1], got {self.mult_beta}")
        if not self.oclr_sharpen > 0:
            raise ValueError(f"oclr_sharpen must be > 0, got {self.oclr_sharpen}")
        if self.lambda_oclr < 0:
            raise ValueError(f"lambda_oclr must be >= 0, got {self.lambda_oclr}")
        ids, rest = divmod(cfg.data.batch_size, cfg.data.num_instances)
        if rest or ids % 2:
            raise ValueError(f"method mult: batch_size / num_instances must be an even number of identities (half "
                             f"from each label space in the cross stage), got {cfg.data.batch_size} / "
                             f"{cfg.data.num_instances}")
        if not cfg.model.two_stream:
            raise ValueError("method mult trains the two-stream backbone: set --two-stream true (the mult presets do)")


__all__ = ["MULTConfig"]
