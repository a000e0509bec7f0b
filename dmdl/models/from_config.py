"""The backbone a config's ``model`` section describes (fast-reid's ``from_config`` idea: the one
place where config keys become :func:`dmdl.models.build_model` arguments)."""

from __future__ import annotations

from torch import nn

from dmdl.config import ModelConfig
from dmdl.models import build_model


def build_model_from_config(model: ModelConfig, pretrained: str | None = None) -> nn.Module:
    """The backbone of a ``model`` section (``arch``, ``last_stride``, ``non_local``,
    ``two_stream``) with its weights (``model.pretrained`` unless ``pretrained`` is given), on the
    CPU, in training mode. Ghost BatchNorm and the memory layout are the training run's business
    (:func:`dmdl.training.context.build_context`), not the model's.

    Raises:
        WeightsError / FileNotFoundError: the weights cannot be had (see :func:`dmdl.models.build_model`).
    """
    kwargs = {"last_stride": model.last_stride}
    if model.arch != "mobilenet_v2":
        kwargs["non_local"] = model.non_local
    return build_model(model.arch, pretrained=model.pretrained if pretrained is None else pretrained,
                       two_stream=model.two_stream, **kwargs)


__all__ = ["build_model_from_config"]
