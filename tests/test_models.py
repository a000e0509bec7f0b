"""Tests for dmdl.models (AGW backbone, non-local block, GeM, pretrained loading)."""

import time
import urllib.error
import warnings

import pytest
import torch
import torchvision

from dmdl.models import AGW, GeM, NonLocalBlock, build_model, gem, load_pretrained
from dmdl.models import weights as weights_mod


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return AGW("resnet18")


def test_shapes_and_feat_dim(r18):
    x = torch.randn(2, 3, 64, 32)
    r18.train()
    assert r18.feat_dim == 512
    assert r18(x).shape == (2, 512)
    pooled, feat = r18(x, return_pooled=True)
    assert pooled.shape == feat.shape == (2, 512)
    assert (pooled >= 0).all()


def test_resnet50_shapes_and_last_stride():
    torch.manual_seed(0)
    m = AGW("resnet50").eval()
    assert m.feat_dim == 2048
    x = torch.randn(1, 3, 48, 32)  # 288x144 scaled down; map is H/16 x W/16
    with torch.no_grad():
        fmap = m.feature_map(x)
        out = m(x)
    assert fmap.shape == (1, 2048, 3, 2)
    assert out.shape == (1, 2048)
    assert sum(isinstance(mod, NonLocalBlock) for mod in m.modules()) == 5
    assert m.non_local_positions == {
        "layer1": (), "layer2": (2, 3), "layer3": (3, 4, 5), "layer4": ()
    }
    assert m.layer4[0].conv2.stride == (1, 1)
    assert m.layer4[0].downsample[0].stride == (1, 1)


def test_last_stride_map_sizes():
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert AGW("resnet18", last_stride=1).eval().feature_map(x).shape == (1, 512, 4, 2)
        assert AGW("resnet18", last_stride=2).eval().feature_map(x).shape == (1, 512, 2, 1)


def test_eval_unit_norm_train_not(r18):
    x = torch.randn(3, 3, 64, 32)
    r18.eval()
    with torch.no_grad():
        e = r18(x)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    r18.train()
    with torch.no_grad():
        t = r18(x)
    assert not torch.allclose(t.norm(dim=1), torch.ones(3), atol=1e-3)


def test_non_local_positions_in_forward_order():
    m = AGW("resnet18").eval()
    assert sum(isinstance(mod, NonLocalBlock) for mod in m.modules()) == 2
    order = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(m, stage)):
            block.register_forward_hook(lambda *a, n=f"{stage}.{i}": order.append(n))
        for k, nl in m.non_local[stage].items():
            nl.register_forward_hook(lambda *a, n=f"nl.{stage}.{k}": order.append(n))
    with torch.no_grad():
        m(torch.randn(1, 3, 32, 16))
    assert order == [
        "layer1.0", "layer1.1",
        "layer2.0", "layer2.1", "nl.layer2.1",
        "layer3.0", "layer3.1", "nl.layer3.1",
        "layer4.0", "layer4.1",
    ]
    assert sum(isinstance(mod, NonLocalBlock) for mod in AGW("resnet18", non_local=False).modules()) == 0


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("hw", [(4, 3), (8, 8)])  # N <= C' and N > C' code paths
def test_non_local_identity_at_init(train, hw):
    torch.manual_seed(0)
    nl = NonLocalBlock(16).train(train)
    x = torch.randn(2, 16, *hw)
    assert torch.equal(nl(x), x)


def test_non_local_math_and_channels_last():
    torch.manual_seed(0)
    nl = NonLocalBlock(8).eval()
    torch.nn.init.normal_(nl.W[1].weight)
    torch.nn.init.normal_(nl.W[1].bias)
    for hw in [(2, 2), (5, 3)]:  # both association orders (C' = 4)
        x = torch.randn(2, 8, *hw)
        n = hw[0] * hw[1]
        th = nl.theta(x).flatten(2)
        ph = nl.phi(x).flatten(2)
        g = nl.g(x).flatten(2)
        f = th.transpose(1, 2) @ ph / n  # (B, N, N)
        y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(2, 4, *hw)
        ref = nl.W(y) + x
        out = nl(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        xc = x.contiguous(memory_format=torch.channels_last)
        outc = nl(xc)
        assert outc.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(outc, ref, rtol=1e-5, atol=1e-5)


def test_gem_hand_value():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # mean of cubes = 25
    expected = torch.tensor([[(25.0 + 1e-12) ** (1.0 / 3.0)]])
    torch.testing.assert_close(gem(x), expected)
    torch.testing.assert_close(GeM(3.0)(x), expected)
    # negatives are clamped to 0, no NaN
    y = torch.tensor([[[[-8.0, 8.0]]]])
    torch.testing.assert_close(gem(y), torch.tensor([[256.0 ** (1.0 / 3.0)]]))  # mean(0, 512)
    assert not any(p.requires_grad for p in GeM().parameters())


def test_bn_neck_bias_frozen(r18):
    bn = r18.bottleneck
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.num_features == 512
    assert not bn.bias.requires_grad and bn.weight.requires_grad
    assert torch.all(bn.bias == 0)
    assert abs(bn.weight.mean().item() - 1.0) < 0.01


def test_backward_and_channels_last():
    torch.manual_seed(0)
    m = AGW("resnet18").train()
    x = torch.randn(2, 3, 64, 32)
    m(x).pow(2).sum().backward()
    assert m.conv1.weight.grad is not None and m.conv1.weight.grad.abs().sum() > 0
    assert m.bottleneck.weight.grad is not None and m.bottleneck.bias.grad is None
    nl = m.non_local["layer2"]["1"]
    assert nl.W[1].weight.grad is not None
    m.eval()
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def _save_resnet18(path, seed=123):
    torch.manual_seed(seed)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), path)
    return ref.state_dict()


def test_load_pretrained_from_file(tmp_path):
    path = tmp_path / "r18.pth"
    sd = _save_resnet18(path)
    m = AGW("resnet18")
    nl_before = {k: v.clone() for k, v in m.non_local.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fc.* is ignored silently
        report = load_pretrained(m, str(path))
    own = m.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(own[k], v), k
    assert report.loaded == len([k for k in sd if not k.startswith("fc.")])
    assert report.unexpected == [] and report.missing == []
    for k, v in m.non_local.state_dict().items():
        assert torch.equal(v, nl_before[k])
    # build_model with a PathLike
    m2 = build_model("resnet18", pretrained=path)
    assert torch.equal(m2.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])


def test_load_pretrained_old_file_without_num_batches_tracked(tmp_path):
    path = tmp_path / "old.pth"
    sd = _save_resnet18(path)
    sd = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": sd, "extra.w": torch.zeros(1)}, path)
    report = load_pretrained(AGW("resnet18"), path)
    assert report.missing and all(k.endswith("num_batches_tracked") for k in report.missing)


def test_load_pretrained_errors(tmp_path):
    m = AGW("resnet18")
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(m, str(missing))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_pretrained(m, junk)
    other = tmp_path / "other.pth"
    torch.save({"a.weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pth"):
        load_pretrained(m, other)
    notdict = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(ValueError, match="list.pth"):
        load_pretrained(m, notdict)
    # a ResNet-18 file into a ResNet-34: missing blocks
    r18 = tmp_path / "r18.pth"
    _save_resnet18(r18)
    with pytest.raises(ValueError, match="r18.pth"):
        load_pretrained(AGW("resnet34", non_local=False), r18)


def test_load_pretrained_shape_mismatch(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "bad_shape.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="bad_shape.pth.*shape"):
        load_pretrained(AGW("resnet18"), path)


@pytest.mark.parametrize("value", ["none", "None", None])
def test_load_pretrained_none_warns(value):
    m = AGW("resnet18")
    before = m.conv1.weight.clone()
    with pytest.warns(UserWarning, match="from scratch"):
        report = load_pretrained(m, value)
    assert report.source == "none" and torch.equal(m.conv1.weight, before)


def test_imagenet_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache

    def fail(weights):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_mod, "_download_state_dict", fail)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as exc:
        build_model("resnet18", pretrained="imagenet")
    assert time.monotonic() - t0 < 10
    msg = str(exc.value)
    assert url in msg and "elsewhere" in msg and "--pretrained /path/to/file.pth" in msg


def test_imagenet_uses_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    sd = _save_resnet18(tmp_path / "checkpoints" / url.rsplit("/", 1)[1], seed=7)

    def fail(weights):
        raise AssertionError("must not download when cached")

    monkeypatch.setattr(weights_mod, "_download_state_dict", fail)
    m = build_model("resnet18", pretrained="imagenet")
    assert torch.equal(m.layer1[0].conv1.weight, sd["layer1.0.conv1.weight"])


def test_bad_args():
    with pytest.raises(ValueError, match="arch"):
        AGW("vgg16")
    with pytest.raises(ValueError, match="last_stride"):
        AGW("resnet18", last_stride=3)
    with pytest.raises(TypeError):
        load_pretrained(AGW("resnet18"), 5)
