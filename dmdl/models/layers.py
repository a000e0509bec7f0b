"""Building blocks of the AGW backbone: the non-local block and GeM pooling.

Source: docs/dmdl.md#A2. Non-local block after Wang et al., "Non-local Neural
Networks", CVPR 2018 (dot-product form, as used by AGW: Ye et al., "Deep
Learning for Person Re-identification: A Survey and Outlook", TPAMI 2021).
GeM after Radenović et al., "Fine-tuning CNN Image Retrieval with No Human
Annotation", TPAMI 2018.

Both modules work on any device and on float32/float16/bfloat16 inputs, and
accept NCHW-contiguous as well as ``torch.channels_last`` tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NonLocalBlock", "GeM", "gem"]


class NonLocalBlock(nn.Module):
    """Dot-product non-local block with a zero-initialised residual branch.

    With ``C' = in_channels // reduction`` (C/2 by default), for an input ``x``
    of shape (B, C, H, W) and ``N = H * W`` positions::

        θ = conv1x1(x), φ = conv1x1(x), g = conv1x1(x)      # (B, C', H, W) each
        f = θᵀ φ / N                                         # (B, N, N), no softmax
        y = f g                                              # (B, C', H, W)
        z = BN(conv1x1(y)) + x                               # (B, C, H, W)

    The BatchNorm of the output branch ``W`` starts with weight = bias = 0, so a
    freshly built block is exactly the identity (``z == x``), in train and eval
    mode.

    Because there is no softmax, ``f g`` is evaluated in whichever association
    order is cheaper (``θᵀ (φ gᵀ)`` when N > C'); both give the same result up
    to floating-point rounding. φ is divided by N before the products, which
    keeps the intermediate sums in range under fp16 autocast.

    Args:
        in_channels: C, the channel count of the input and output.
        reduction: C' = C // reduction (2 in AGW).

    Shapes: input (B, C, H, W), output (B, C, H, W), same dtype, device and
    memory format (channels_last stays channels_last).

    Raises:
        ValueError: if ``in_channels // reduction`` is < 1.
    """

    def __init__(self, in_channels: int, reduction: int = 2) -> None:
        super().__init__()
        inter = in_channels // reduction
        if inter < 1:
            raise ValueError(
                f"NonLocalBlock: in_channels={in_channels} // reduction={reduction} must be >= 1"
            )
        self.in_channels = in_channels
        self.inter_channels = inter
        self.g = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.theta = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inter, kernel_size=1)
        self.W = nn.Sequential(
            nn.Conv2d(inter, in_channels, kernel_size=1),
            nn.BatchNorm2d(in_channels),
        )
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        n = h * w
        c = self.inter_channels
        # (B, C', H, W) -> (B, N, C'); a view for channels_last inputs.
        theta = self.theta(x).permute(0, 2, 3, 1).reshape(b, n, c)
        phi = self.phi(x).permute(0, 2, 3, 1).reshape(b, n, c) / n
        g = self.g(x).permute(0, 2, 3, 1).reshape(b, n, c)
        if n <= c:
            f = torch.bmm(theta, phi.transpose(1, 2))  # (B, N, N)
            y = torch.bmm(f, g)  # (B, N, C')
        else:
            y = torch.bmm(theta, torch.bmm(phi.transpose(1, 2), g))  # (B, N, C')
        # (B, N, C') is the channels_last layout of (B, C', H, W).
        y = y.reshape(b, h, w, c).permute(0, 3, 1, 2)
        if x.is_contiguous():
            y = y.contiguous()
        return self.W(y) + x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, inter_channels={self.inter_channels}"


def gem(x: Tensor, p: float = 3.0, eps: float = 1e-12) -> Tensor:
    """Generalized-mean pooling over the spatial dimensions with a fixed power.

    Computes ``(mean_{h,w} max(x, 0)^p + eps)^(1/p)`` per channel (docs/dmdl.md#A2
    : ``(mean x³ + 1e-12)^(1/3)``). Negative inputs are clamped to 0 first so
    the root is always real; for post-ReLU features (the AGW case) the clamp
    changes nothing. The power and mean are computed in float32 (x³ overflows
    float16 quickly) and the result is cast back to ``x.dtype``.

    Args:
        x: (B, C, H, W) feature map, any float dtype, any device/memory format.
        p: the power (3 in AGW; fixed, not learned).
        eps: added to the mean before the root.

    Returns:
        (B, C) tensor with ``x``'s dtype and device.

    Raises:
        ValueError: if ``x`` is not 4-D.
    """
    if x.dim() != 4:
        raise ValueError(f"gem expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    xf = x.float().clamp(min=0.0)
    pooled = (xf.pow(p).mean(dim=(2, 3)) + eps).pow(1.0 / p)
    return pooled.to(x.dtype)


class GeM(nn.Module):
    """Module form of :func:`gem` with a fixed (non-learned) power ``p``.

    Input (B, C, H, W), output (B, C); see :func:`gem`.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-12) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM: p must be > 0, got {p}")
        self.p = float(p)
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={self.p}, eps={self.eps}"


def bn_neck(dim: int) -> nn.BatchNorm1d:
    """The BNNeck of AGW/DMDL (docs/dmdl.md#A2): ``BatchNorm1d(dim)``, weight ~ N(1, 0.01),
    bias 0 and frozen (``requires_grad=False``)."""
    neck = nn.BatchNorm1d(dim)
    nn.init.normal_(neck.weight, 1.0, 0.01)
    nn.init.zeros_(neck.bias)
    neck.bias.requires_grad_(False)
    return neck


def embed(pool: nn.Module, neck: nn.Module, feature_map: Tensor, training: bool, return_pooled: bool):
    """Pool a (B, C, h, w) feature map and pass it through the neck: the raw neck feature in
    training, the L2-normalised one in evaluation (docs/dmdl.md#A2); ``(pooled, feature)`` with
    ``return_pooled``."""
    pooled = pool(feature_map)
    feat = neck(pooled)
    if not training:
        feat = F.normalize(feat, p=2, dim=1)
    return (pooled, feat) if return_pooled else feat
