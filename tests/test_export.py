"""`dmdl export`: ONNX (run with onnxruntime) and TorchScript equal PyTorch; the slim pth."""

import json
import warnings

import numpy as np
import pytest
import torch

from dmdl.cli import main
from dmdl.inference._bridge import fresh_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exported(trained_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    files = {}
    for name, run in trained_runs.items():
        for fmt, ext in (("onnx", "onnx"), ("torchscript", "pt"), ("pth", "pth")):
            path = out / f"{name}.{ext}"
            assert main(["export", "--checkpoint", str(run), "--format", fmt, "--out", str(path)]) == 0
            files[name, fmt] = path
    return files


def _model(run):
    ckpt = torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=False)
    model = fresh_model(ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


@pytest.mark.parametrize("name", ["dmdl", "mult"])
def test_onnx_and_torchscript_equal_pytorch_for_both_modalities(name, exported, trained_runs):
    model, ckpt = _model(trained_runs[name])
    two = getattr(model, "two_stream", False)
    x = torch.randn(5, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    sess = ort.InferenceSession(str(exported[name, "onnx"]), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert [i.name for i in sess.get_inputs()] == (["images", "modality"] if two else ["images"])
    assert (json.loads(meta["height"]), json.loads(meta["width"])) == (64, 32)
    assert json.loads(meta["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(meta["std"]) == pytest.approx([0.229, 0.224, 0.225])
    assert json.loads(meta["two_stream"]) is two and meta["modality_input"].startswith("modality: int64") is two
    extra = {"dmdl_meta.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        ts = torch.jit.load(str(exported[name, "torchscript"]), _extra_files=extra)
    assert json.loads(extra["dmdl_meta.json"])["weights_hash"] == meta["weights_hash"]
    mixed = torch.tensor([0, 1, 1, 0, 1])
    for modality, codes in (("visible", torch.zeros(5, dtype=torch.int64)),
                            ("infrared", torch.ones(5, dtype=torch.int64)), ("mixed", mixed)):
        with torch.no_grad():
            if not two:
                ref = model(x)
            elif modality == "mixed":
                ref = torch.where(mixed[:, None] == 1, model(x, "infrared"), model(x, "visible"))
            else:
                ref = model(x, modality)
        feeds = {"images": x.numpy()}
        if two:
            feeds["modality"] = codes.numpy()
        np.testing.assert_allclose(sess.run(None, feeds)[0], ref.numpy(), atol=1e-4, rtol=0)
        with torch.no_grad():
            got = ts(x, codes) if two else ts(x)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    if two:  # the stems differ after training, so the modality input matters
        assert not torch.allclose(model(x, "visible"), model(x, "infrared"), atol=1e-4)
    one = sess.run(None, {k: v[:1] for k, v in feeds.items()})[0]  # dynamic batch
    assert one.shape == (1, 1280)


@pytest.mark.parametrize("name", ["dmdl", "mult"])
def test_slim_pth_loads_into_a_fresh_model_and_gives_the_same_features(name, exported, trained_runs, toy_regdb):
    import dmdl

    slim = torch.load(exported[name, "pth"], map_location="cpu", weights_only=True)
    model, ckpt = _model(trained_runs[name])
    assert set(slim) == {"format", "model", "config", "meta"}
    assert set(ckpt) - set(slim)  # the optimizer, memories, pseudo-labels ... are gone
    fresh = fresh_model(slim["config"])
    own = fresh.state_dict()
    assert set(slim["model"]) == set(own)  # nothing else: no tensor sized by the cluster count
    assert all(slim["model"][k].shape == own[k].shape for k in own)
    fresh.load_state_dict(slim["model"])
    paths = [str(p) for p in sorted((toy_regdb / "Thermal").rglob("*.bmp"))[:6]]
    full, small = dmdl.FeatureExtractor(trained_runs[name]), dmdl.FeatureExtractor(exported[name, "pth"])
    assert full.weights_hash == small.weights_hash == slim["meta"]["weights_hash"]
    torch.testing.assert_close(small(paths, "infrared"), full(paths, "infrared"), atol=0, rtol=0)
    assert exported[name, "pth"].stat().st_size < (trained_runs[name] / "checkpoint.pth").stat().st_size / 2


def test_export_cli_errors(trained_runs, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "no.pth"), "--format", "onnx", "--out",
                 str(tmp_path / "m.onnx")]) == 2
    assert "dmdl export: error: checkpoint not found" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"junk")
    assert main(["export", "--checkpoint", str(tmp_path / "junk.pth"), "--format", "pth", "--out",
                 str(tmp_path / "m.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a readable checkpoint" in err[0]
    with pytest.raises(SystemExit):  # argparse: an unknown format
        main(["export", "--checkpoint", str(trained_runs["dmdl"]), "--format", "tflite", "--out", "x"])
