"""dmdl.FeatureExtractor and `dmdl extract`: the features of the evaluation, for any input kind."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

import dmdl
from dmdl.cli import main
from dmdl.data.regdb import RegDB
from dmdl.errors import CheckpointError, InputError
from dmdl.evaluation.metrics import eval_regdb

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet, as the test transform


@pytest.fixture(scope="module")
def extractors(trained_runs):
    return {name: dmdl.FeatureExtractor(run) for name, run in trained_runs.items()}


#: the test resize of each method's released code: DMDL bicubic, MULT torchvision's default bilinear
RESIZE = {"dmdl": T.InterpolationMode.BICUBIC, "mult": T.InterpolationMode.BILINEAR}


def _reference_features(model, paths, height, width, modality, resize=T.InterpolationMode.BICUBIC):
    """Written from docs/dmdl.md#A11: resize, ToTensor, ImageNet normalisation; the eval-mode
    features of the image and of its horizontal flip, averaged, L2-normalised."""
    tf = T.Compose([T.Resize((height, width), interpolation=resize), T.ToTensor(), T.Normalize(MEAN, STD)])
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    net = (lambda t: model(t, modality)) if getattr(model, "two_stream", False) else model
    with torch.no_grad():
        f = (net(x) + net(torch.flip(x, dims=[3]))) / 2
    return F.normalize(f, dim=1)


@pytest.mark.parametrize("name", ["dmdl", "mult"])
def test_features_reproduce_the_evaluation(name, extractors, trained_runs, toy_regdb):
    fx = extractors[name]
    ds = RegDB(toy_regdb, trial=1)
    vis = fx([r.path for r in ds.test_visible], modality="visible")
    ir = fx([r.path for r in ds.test_infrared], modality="infrared")
    assert vis.dtype == torch.float32 and vis.shape == (len(ds.test_visible), fx.feature_dim)
    torch.testing.assert_close(vis.norm(dim=1), torch.ones(len(vis)))
    pv, pi = np.array([r.pid for r in ds.test_visible]), np.array([r.pid for r in ds.test_infrared])
    trained = json.loads((trained_runs[name] / "results.json").read_text())["results"]["trained"]
    for direction, (q, g, qp, gp) in {"v2t": (vis, ir, pv, pi), "t2v": (ir, vis, pi, pv)}.items():
        cmc, mAP, mINP = eval_regdb((-(q @ g.t())).numpy(), qp, gp)
        got = {"rank1": 100 * cmc[0], "rank10": 100 * cmc[9], "mAP": 100 * mAP, "mINP": 100 * mINP}
        for k, v in got.items():
            assert v == pytest.approx(trained[direction][k], abs=1e-6), (direction, k)
    paths = [r.path for r in ds.test_infrared[:7]]
    ref = _reference_features(fx.model, paths, fx.height, fx.width, "infrared", RESIZE[name])
    torch.testing.assert_close(ir[:7], ref, atol=1e-5, rtol=0)


def test_every_input_kind_gives_the_same_features(extractors, toy_regdb):
    fx = extractors["mult"]
    folder = toy_regdb / "Thermal" / sorted(p.name for p in (toy_regdb / "Thermal").iterdir())[0]
    paths = sorted(str(p) for p in folder.glob("*.bmp"))
    by_path = fx(paths, modality="infrared")
    pil = [Image.open(p) for p in paths]  # RegDB thermal .bmp: RGB files holding grey images
    arrays = [np.array(im.convert("RGB")) for im in pil]
    inputs = {
        "folder": str(folder),
        "glob": str(folder / "*.bmp"),
        "PIL": pil,
        "PIL grey (L)": [im.convert("L") for im in pil],
        "uint8 HxWx3 arrays": arrays,
        "uint8 NxHxWx3 batch": np.stack(arrays),
        "uint8 HxW grey arrays": [a[:, :, 0] for a in arrays],
        "uint8 3xHxW tensors": [torch.from_numpy(a).permute(2, 0, 1) for a in arrays],
        "float ToTensor batch": torch.stack([T.ToTensor()(a) for a in arrays]),
    }
    assert all((a[:, :, 0] == a[:, :, 1]).all() for a in arrays)  # grey, so "L" is the same image
    for what, images in inputs.items():
        torch.testing.assert_close(fx(images, modality="infrared"), by_path, atol=1e-6, rtol=0, msg=what)
    res = fx.extract(pil[:2], modality="infrared")
    assert res.names == ["<PIL image 0>", "<PIL image 1>"] and res.modality == "infrared" and not res.skipped


def test_modality_picks_the_stem_of_a_two_stream_model_only(extractors, toy_regdb):
    path = str(sorted((toy_regdb / "Visible").rglob("*.bmp"))[0])
    one, two = extractors["dmdl"], extractors["mult"]
    assert not one.two_stream and two.two_stream
    torch.testing.assert_close(one(path, "visible"), one(path, "infrared"), atol=0, rtol=0)
    torch.testing.assert_close(one(path), one(path, "visible"), atol=0, rtol=0)
    assert not torch.allclose(two(path, "visible"), two(path, "infrared"), atol=1e-4)  # trained stems differ
    for m in ("visible", "infrared"):
        ref = _reference_features(two.model, [path], two.height, two.width, m, RESIZE["mult"])
        torch.testing.assert_close(two(path, m), ref, atol=1e-5, rtol=0)


def test_bad_inputs_raise_clear_errors(extractors, tmp_path):
    fx = extractors["mult"]
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        dmdl.FeatureExtractor(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        dmdl.FeatureExtractor(tmp_path / "junk.pth")
    img = tmp_path / "a.png"
    Image.new("RGB", (16, 32), (10, 20, 30)).save(img)
    with pytest.raises(InputError, match="two-stream model"):
        fx(str(img))
    with pytest.raises(InputError, match="'thermal'"):
        fx(str(img), modality="thermal")
    with pytest.raises(InputError, match="no image files"):
        fx(str(_empty(tmp_path)), modality="visible")
    with pytest.raises(InputError, match="no such file or folder"):
        fx(str(tmp_path / "nothing.png"), modality="visible")
    with pytest.raises(InputError, match="uint8"):
        fx(np.zeros((8, 4, 3), dtype=np.float32), modality="visible")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        fx(torch.full((3, 8, 4), 2.0), modality="visible")
    with pytest.raises(InputError, match="dict"):
        fx({"a": 1}, modality="visible")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir(exist_ok=True)
    (d / "notes.txt").write_text("no images here")
    return d


def test_an_unreadable_image_is_skipped_or_raised(extractors, tmp_path):
    fx = extractors["dmdl"]
    for i in range(3):
        Image.new("RGB", (16, 32), (40 * i, 20, 30)).save(tmp_path / f"{i}.png")
    (tmp_path / "1b.png").write_bytes(b"\x89PNG broken")
    res = fx.extract(str(tmp_path), "visible", on_error="skip")
    assert [n.rsplit("/", 1)[1] for n in res.names] == ["0.png", "1.png", "2.png"]
    assert len(res.skipped) == 1 and res.skipped[0][0].endswith("1b.png") and "1b.png" in res.skipped[0][1]
    torch.testing.assert_close(res.features, fx([str(tmp_path / f"{i}.png") for i in range(3)], "visible"))
    with pytest.raises(InputError, match="1b.png"):  # ImageReadError is an InputError
        fx(str(tmp_path), "visible")


def test_extract_cli_writes_features_and_reports_bad_images(extractors, trained_runs, toy_regdb, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((toy_regdb / "Thermal").rglob("*.bmp"))[:4]
    for p in src:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz_broken.bmp").write_bytes(b"BM not really")
    out = tmp_path / "f.npz"
    rc = main(["extract", "--checkpoint", str(trained_runs["mult"]), "--images", str(folder), "--modality",
               "infrared", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped an unreadable image" in err and "zz_broken.bmp" in err
    z = np.load(out)
    assert z["features"].shape == (4, 1280) and z["features"].dtype == np.float32
    assert [p.rsplit("/", 1)[1] for p in z["paths"]] == [p.name for p in src]
    assert str(z["modality"]) == "infrared" and str(z["weights_hash"]) == extractors["mult"].weights_hash
    assert len(z["skipped"]) == 1
    np.testing.assert_allclose(z["features"], extractors["mult"]([str(folder / p.name) for p in src], "infrared"),
                               atol=1e-6)


@pytest.mark.parametrize("case, expected", [
    ("missing checkpoint", "checkpoint not found"),
    ("no images", "no image files"),
    ("bad modality", "modality 'thermal'"),
    ("no modality", "two-stream model"),
    ("all unreadable", "none of the 1 images could be read"),
])
def test_extract_cli_errors_are_one_line(case, expected, trained_runs, tmp_path, capsys):
    folder = _empty(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"\xff\xd8 truncated")
    args = {"missing checkpoint": ["--checkpoint", str(tmp_path / "none.pth"), "--images", str(bad)],
            "no images": ["--checkpoint", str(trained_runs["mult"]), "--images", str(folder)],
            "bad modality": ["--checkpoint", str(trained_runs["mult"]), "--images", str(bad), "--modality", "thermal"],
            "no modality": ["--checkpoint", str(trained_runs["mult"]), "--images", str(bad)],
            "all unreadable": ["--checkpoint", str(trained_runs["mult"]), "--images", str(bad), "--modality",
                               "visible"]}[case]
    if case != "no modality" and "--modality" not in args:
        args += ["--modality", "visible"]
    rc = main(["extract", *args, "--out", str(tmp_path / "f.npz")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dmdl extract")]
    assert rc == 2 and len(err) == 1 and err[0].startswith("dmdl extract: error: ") and expected in err[0]
    assert not (tmp_path / "f.npz").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_extract_cli_asked_for_a_gpu_without_one(trained_runs, toy_regdb, tmp_path, capsys):
    rc = main(["extract", "--checkpoint", str(trained_runs["dmdl"]), "--images", str(toy_regdb / "Visible"),
               "--device", "cuda", "--out", str(tmp_path / "f.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "torch.cuda.is_available() is False" in err[0]
