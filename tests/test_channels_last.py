"""channels_last only reorders float sums: the CPU preset's backbone gives the same features and
gradients in either memory format to rounding (in float64 the two layouts agree to ~1e-6; in float32
they differ by no more than float32 rounding itself does), so an accuracy difference between runs in
the two layouts is run-to-run noise, not another computation."""

import copy
import warnings

import pytest
import torch

from dmdl.losses import triplet_loss
from dmdl.models import build_model


def _step(model, x, labels, args, channels_last):
    model = copy.deepcopy(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x, *args)
    triplet_loss(out, labels).backward()
    return out.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("two_stream", [False, True])
def test_one_step_is_the_same_computation_in_channels_last(two_stream):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no pretrained weights: a random init is enough here
        model = build_model("mobilenet_v2", pretrained="none", last_stride=1, two_stream=two_stream)
    x = torch.randn(8, 3, 64, 32)
    labels = torch.arange(2).repeat_interleave(4)
    args = (torch.arange(8) >= 4,) if two_stream else ()
    m64 = copy.deepcopy(model).double()
    out64, g64 = _step(m64, x.double(), labels, args, False)
    out64_cl, g64_cl = _step(m64, x.double(), labels, args, True)
    assert _rel(out64_cl, out64) < 1e-5 and _rel(g64_cl, g64) < 1e-4  # the same computation
    out, g = _step(model, x, labels, args, False)
    out_cl, g_cl = _step(model, x, labels, args, True)
    # float32: the layouts differ by the order of float32 rounding itself (default vs float64)
    assert _rel(out_cl, out) < 10 * _rel(out, out64) + 1e-6
    assert _rel(g_cl, g) < 10 * _rel(g, g64) + 1e-6
