"""Tests for dmdl.models.two_stream (MULT's two-stream backbone, docs/mult.md#B2) and its wiring
(build_model, extract_features, the DMDL training step)."""

import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from dmdl.features import extract_features
from dmdl.models import AGW, MobileNetV2ReID, TwoStream, build_model, load_pretrained
from dmdl.models import weights as weights_mod
from dmdl.models.ghost_bn import replica_forward, replica_order

X = (6, 3, 64, 32)
MIXED = torch.tensor([0, 1, 1, 0, 1, 0])


def _build(arch="resnet18", pretrained="none", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "none": random initialisation warning
        return build_model(arch, pretrained, two_stream=True, **kw)


@pytest.fixture(params=["resnet18", "mobilenet_v2"])
def model(request):
    torch.manual_seed(0)
    kw = {"non_local": False} if request.param == "mobilenet_v2" else {}
    return _calibrate(_build(request.param, **kw))


def _calibrate(model):
    """Set every BatchNorm's running statistics to those of one random batch: a randomly
    initialised MobileNetV2 in eval mode otherwise outputs (nearly) the same vector for any input."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 32), torch.tensor([0, 1] * 4))
    for bn in bns:
        bn.momentum = 0.1
    return model


def _perturb(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            t.add_(0.1 * torch.randn(t.shape, generator=g)).abs_()


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_layout_and_attributes(arch):
    model = _build(arch, non_local=False)
    assert isinstance(model, TwoStream) and model.two_stream is True
    assert model.arch in ("resnet18", "mobilenet_v2")
    keys = list(model.state_dict())
    assert any(k.startswith("stem_visible.") for k in keys)
    assert any(k.startswith("stem_infrared.") for k in keys)
    # the stem lives only in the two stems, not also (idle) in the shared part
    assert not any(k.startswith(("shared.conv1.", "shared.bn1.", "shared.features.0.")) for k in keys)
    n_stem = sum(k.startswith("stem_visible.") for k in keys)
    assert sum(k.startswith("stem_infrared.") for k in keys) == n_stem
    bk = model.backbone_state_keys()
    assert set(bk) <= set(keys) and len(bk) == len(set(bk))
    assert sum(k.startswith("stem_") for k in bk) == 2 * n_stem
    # both stems start equal
    sv, si = model.stem_visible.state_dict(), model.stem_infrared.state_dict()
    for k in sv:
        assert torch.equal(sv[k], si[k]), k
    assert model.stem_visible.state_dict()[next(iter(sv))].data_ptr() != si[next(iter(si))].data_ptr()


def test_outputs_like_one_stream(model):
    x = torch.randn(*X)
    model.train()
    f = model(x, "visible")
    assert f.shape == (6, model.feat_dim) and f.dtype == torch.float32
    pooled, feat = model(x, MIXED, return_pooled=True)
    assert pooled.shape == feat.shape == (6, model.feat_dim)
    model.eval()
    with torch.no_grad():
        e = model(x, "infrared")
    torch.testing.assert_close(e.norm(dim=1), torch.ones(6))


def test_same_weights_equal_one_stream():
    # with equal stems, the two-stream model is the one-stream model it wraps
    torch.manual_seed(0)
    one = AGW("resnet18").eval()
    ref = {k: v.clone() for k, v in one.state_dict().items()}
    x = torch.randn(*X)
    with torch.no_grad():
        expected = one(x)
        ts = TwoStream(one).eval()
        got = ts(x, MIXED)
    torch.testing.assert_close(got, expected)
    for k, v in ref.items():
        key = ("stem_visible." + k) if k.startswith(("conv1.", "bn1.")) else "shared." + k
        assert torch.equal(ts.state_dict()[key], v), k


def _differ(a, b):
    return bool(((a - b).norm() / b.norm()) > 1e-3)


def test_each_modality_uses_its_own_stem(model):
    # compared on the pooled feature: an untrained eval-mode BN neck squashes its input
    x = torch.randn(*X)
    model.eval()
    with torch.no_grad():
        vis0, ir0 = model(x, "visible", return_pooled=True), model(x, "infrared", return_pooled=True)
        _perturb(model.stem_infrared)
        vis1, ir1 = model(x, "visible", return_pooled=True), model(x, "infrared", return_pooled=True)
        for a, b in zip(vis0, vis1):
            assert torch.equal(a, b)
        assert _differ(ir0[0], ir1[0]) and not torch.equal(ir0[1], ir1[1])
        _perturb(model.stem_visible, seed=2)
        assert _differ(model(x, "visible", return_pooled=True)[0], vis1[0])
        assert torch.equal(model(x, "infrared"), ir1[1])


def test_mixed_batch_equals_per_row_in_eval(model):
    _perturb(model.stem_infrared)
    x = torch.randn(*X)
    model.eval()
    with torch.no_grad():
        mixed = model(x, MIXED)
        vis, ir = model(x, "visible"), model(x, "infrared")
        pv, pi = model(x, "visible", return_pooled=True)[0], model(x, "infrared", return_pooled=True)[0]
        pm = model(x, MIXED, return_pooled=True)[0]
    expected = torch.where(MIXED.bool()[:, None], ir, vis)
    torch.testing.assert_close(mixed, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pm, torch.where(MIXED.bool()[:, None], pi, pv), rtol=1e-5, atol=1e-6)
    assert _differ(pv, pi)


@pytest.mark.parametrize("train", [False, True])
def test_tensor_routing_equals_string(model, train):
    _perturb(model.stem_infrared)
    x = torch.randn(*X)
    model.train(train)
    ones, zeros = torch.ones(6, dtype=torch.bool), torch.zeros(6, dtype=torch.bool)
    with torch.no_grad():
        for name, mask in (("visible", zeros), ("infrared", ones)):
            ref = model(x, name)
            for m in (mask, mask.long(), mask.int()):
                assert torch.equal(model(x, m), ref)
        assert torch.equal(model(x, MIXED), model(x, MIXED.bool()))


def test_train_mode_stem_statistics_per_modality():
    # in train mode a stem's BatchNorm sees only its rows; the shared ones see the whole batch
    torch.manual_seed(0)
    ts = _build("resnet18", non_local=False).train()
    x = torch.randn(*X)
    m = MIXED.bool()
    ts.stem_visible.bn1.reset_running_stats()
    ts.stem_infrared.bn1.reset_running_stats()
    ts.stem_visible.bn1.momentum = ts.stem_infrared.bn1.momentum = None  # cumulative average
    with torch.no_grad():
        ts(x, MIXED)
        conv = ts.stem_visible.conv1  # equal weights in both stems
        mv = conv(x[~m]).mean(dim=(0, 2, 3))
        mi = conv(x[m]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(ts.stem_visible.bn1.running_mean, mv, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ts.stem_infrared.bn1.running_mean, mi, rtol=1e-4, atol=1e-5)


def test_gradients_reach_only_the_used_stem(model):
    x = torch.randn(*X)
    model.train()
    model(x, "visible").sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.stem_visible.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.stem_infrared.parameters())
    model.zero_grad(set_to_none=True)
    model(x, torch.ones(6, dtype=torch.bool)).sum().backward()
    assert all(p.grad is None for p in model.stem_visible.parameters())
    assert all(p.grad is not None for p in model.stem_infrared.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model(x, MIXED).sum().backward()
    for stem in (model.stem_visible, model.stem_infrared):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in stem.parameters() if p.requires_grad)


def test_ghost_bn_and_dataparallel_order():
    # the DMDL step's layout: [visible; infrared] permuted into replica groups, routed by a mask
    torch.manual_seed(0)
    ts = _build("resnet18", non_local=False).train()
    n = 4
    x = torch.randn(2 * n, 3, 64, 32)
    perm = replica_order(torch.arange(2 * n) >= n, 2)
    infrared = (torch.arange(2 * n) >= n)[perm]
    out = replica_forward(ts, x[perm], 2, infrared)[torch.argsort(perm)]
    assert out.shape == (2 * n, 512) and torch.isfinite(out).all()
    _perturb(ts.stem_infrared)
    ts.eval()  # the permuted mask still sends every row to its own stem
    with torch.no_grad():
        torch.testing.assert_close(ts(x[perm], infrared)[torch.argsort(perm)], ts(x, torch.arange(2 * n) >= n))


# ----------------------------------------------------------------------------- weights


def _resnet18_file(tmp_path, seed=3):
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    return path, state


def _assert_backbone_from(ts, state):
    own = ts.state_dict()
    for k in ("conv1.weight", "bn1.weight", "bn1.running_var"):
        assert torch.equal(own["stem_visible." + k], state[k])
        assert torch.equal(own["stem_infrared." + k], state[k])
    for k in ("layer1.0.conv1.weight", "layer4.1.bn2.running_mean"):
        assert torch.equal(own["shared." + k], state[k])


def test_both_stems_load_the_same_file_weights(tmp_path):
    path, state = _resnet18_file(tmp_path)
    ts = build_model("resnet18", str(path), two_stream=True)
    _assert_backbone_from(ts, state)
    ts2 = build_model("resnet18", path, two_stream=True)  # PathLike
    _assert_backbone_from(ts2, state)


def test_both_stems_load_the_imagenet_weights(monkeypatch, tmp_path):
    _, state = _resnet18_file(tmp_path, seed=4)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # empty cache
    monkeypatch.setattr(weights_mod, "_download_state_dict", lambda weights: state)
    ts = build_model("resnet18", "imagenet", two_stream=True)
    _assert_backbone_from(ts, state)


def test_mobilenet_stems_load_the_same_file_weights(tmp_path):
    torch.manual_seed(5)
    state = {k: v for k, v in torchvision.models.mobilenet_v2(weights=None).state_dict().items()
             if k.startswith("features.")}
    path = tmp_path / "mnv2.pth"
    torch.save(state, path)
    ts = build_model("mobilenet_v2", str(path), two_stream=True, non_local=False)
    own = ts.state_dict()
    for k in ("0.weight", "1.weight", "1.running_mean"):  # features[0] = (conv, BN, ReLU6)
        assert torch.equal(own["stem_visible." + k], state["features.0." + k])
        assert torch.equal(own["stem_infrared." + k], state["features.0." + k])
    assert torch.equal(own["shared.features.18.0.weight"], state["features.18.0.weight"])


def test_state_dict_round_trip(model, tmp_path):
    _perturb(model.stem_infrared)
    _perturb(model.shared.bottleneck, seed=5)
    x = torch.randn(*X)
    model.eval()
    kw = {"non_local": False} if model.arch == "mobilenet_v2" else {}
    other = _build(model.arch, **kw)
    other.load_state_dict(model.state_dict())  # strict
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x, MIXED), model(x, MIXED))

    # pretrained=<two-stream file>: the backbone (both stems, shared torchvision part) loads
    path = tmp_path / "ts.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}}, path)
    with pytest.warns(UserWarning, match="two-stream backbone only"):
        loaded = build_model(model.arch, str(path), two_stream=True, **kw)
    own, src = loaded.state_dict(), model.state_dict()
    for k in model.backbone_state_keys():
        assert torch.equal(own[k], src[k]), k
    assert not torch.equal(own["stem_visible." + next(iter(model.stem_visible.state_dict()))],
                           own["stem_infrared." + next(iter(model.stem_infrared.state_dict()))])
    assert not torch.equal(own["shared.bottleneck.weight"], src["shared.bottleneck.weight"])  # neck: not loaded


def test_pretrained_errors(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="two-stream state dict") as err:
        build_model("resnet18", str(bad), two_stream=True)
    assert "bad.pth" in str(err.value)
    with pytest.raises(FileNotFoundError):
        build_model("resnet18", str(tmp_path / "missing.pth"), two_stream=True)
    # a two-stream resnet18 file for a two-stream resnet34
    ts18 = _build("resnet18")
    f18 = tmp_path / "ts18.pth"
    torch.save(ts18.state_dict(), f18)
    with pytest.raises(ValueError, match="does not match a two-stream resnet34"):
        build_model("resnet34", str(f18), two_stream=True)
    # a partial two-stream file
    part = tmp_path / "part.pth"
    torch.save({k: v for k, v in ts18.state_dict().items() if not k.startswith("stem_infrared.")}, part)
    with pytest.raises(ValueError, match="backbone keys missing.*stem_infrared"):
        build_model("resnet18", str(part), two_stream=True)
    with pytest.raises(TypeError, match="build_model"):
        load_pretrained(ts18, "none")


def test_modality_errors(model):
    x = torch.randn(*X)
    with pytest.raises(ValueError, match="modality is required"):
        model(x)
    with pytest.raises(ValueError, match="'visible' or 'infrared'"):
        model(x, "rgb")
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        model(x, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool or integer"):
        model(x, torch.zeros(6))
    with pytest.raises(ValueError, match="only hold 0"):
        model(x, torch.full((6,), 2))
    with pytest.raises(TypeError, match="str or a"):
        model(x, [0] * 6)


def test_detached_stem_errors():
    one = MobileNetV2ReID()
    TwoStream(one)
    with pytest.raises(RuntimeError, match="TwoStream"):
        one(torch.randn(2, 3, 64, 32))
    with pytest.raises(RuntimeError, match="already detached"):
        one.detach_stem()
    agw = AGW("resnet18")
    TwoStream(agw)
    with pytest.raises(RuntimeError, match="TwoStream"):
        agw.feature_map(torch.randn(2, 3, 64, 32))
    with pytest.raises(TypeError, match="AGW or a MobileNetV2ReID"):
        TwoStream(torch.nn.Linear(2, 2))


def test_one_stream_split_is_feature_map():
    torch.manual_seed(0)
    for m in (AGW("resnet18").eval(), MobileNetV2ReID().eval()):
        x = torch.randn(2, 3, 64, 32)
        with torch.no_grad():
            assert torch.equal(m.feature_map(x), m.trunk(m.stem(x)))


# ----------------------------------------------------------------------------- extraction


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_extract_features_routes_by_modality(images):
    torch.manual_seed(0)
    ts = _build("resnet18", non_local=False)
    _perturb(ts.stem_infrared)
    fv = extract_features(ts, images, 64, 32, modality="visible")
    fi = extract_features(ts, images, 64, 32, modality="infrared")
    assert fv.shape == fi.shape == (3, 512)
    assert not torch.equal(fv, fi)
    assert ts.training  # restored
    # the same as calling the model by hand (flip-averaged, renormalised)
    from dmdl.data.transforms import test_transform

    x = torch.stack([test_transform(64, 32)(Image.open(p).convert("RGB")) for p in images])
    ts.eval()
    with torch.no_grad():
        ref = torch.nn.functional.normalize(ts(x, "infrared") + ts(x.flip(3), "infrared"), dim=1)
    torch.testing.assert_close(fi, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="two-stream model needs"):
        extract_features(ts, images, 64, 32)
    with pytest.raises(ValueError, match="modality must be"):
        extract_features(ts, images, 64, 32, modality="thermal")
    # one-stream models ignore the modality
    one = AGW("resnet18", non_local=False)
    torch.testing.assert_close(extract_features(one, images, 64, 32, modality="infrared"),
                               extract_features(one, images, 64, 32))


# ----------------------------------------------------------------------------- training


def test_dmdl_training_routes_each_modality_to_its_stem(tmp_path):
    # the DMDL step with a two-stream model and ghost-BN replica groups: runs, trains both stems
    from dmdl.config import load_config
    from dmdl.data.toy import make_toy_dataset
    from dmdl.engine import Engine
    from dmdl.methods import get_method
    from dmdl.rundir import CHECKPOINT_NAME

    root = str(make_toy_dataset(tmp_path / "RegDB", layout="regdb", num_ids=12, seed=0))
    out = tmp_path / "run"
    cfg = load_config("regdb-cpu", [
        "--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16", "--num-instances", "4",
        "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0", "--data-root", root,
        "--output-dir", str(out), "--stage1-epochs", "1", "--stage2-epochs", "1",
        "--eval-untrained", "false", "--two-stream", "true", "--ghost-bn-groups", "2",
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eng = Engine(cfg, get_method(cfg))
        init = {k: v.clone() for k, v in eng.ctx.model.state_dict().items()}
        results = eng.run()
    assert isinstance(eng.ctx.model, TwoStream)
    assert set(results["trained"]) >= {"v2t", "t2v"}
    state = torch.load(out / CHECKPOINT_NAME, weights_only=False)["model"]
    for stem in ("stem_visible", "stem_infrared"):
        key = f"{stem}.0.weight"
        assert not torch.equal(state[key], init[key]), key  # each stem was trained
    assert not torch.equal(state["stem_visible.0.weight"], state["stem_infrared.0.weight"])
