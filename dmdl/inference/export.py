"""Export the inference graph of a checkpoint: ONNX, TorchScript, or a slim ``pth``.

The graph is the backbone, GeM pooling and BN neck, L2-normalised (the model in eval mode,
docs/dmdl.md#A2): input ``images``, float32 (B, 3, H, W), RGB resized (``interpolation`` of the metadata: bicubic for DMDL, bilinear for MULT) to the
checkpoint's H x W and normalised with the ImageNet mean/std; output ``features``, float32
(B, D), unit rows. A two-stream model (MULT, docs/mult.md#B2) takes a second input ``modality``, int64
(B,), 0 = visible, 1 = infrared, which picks each row's stem (both stems run on the batch,
the row's one is kept; the stem is a small part of the network). The batch size is dynamic.
Flip averaging is not in the graph: evaluation averages the features of an image and of its
horizontal flip and L2-normalises the mean (:class:`dmdl.FeatureExtractor` does it).

Metadata (ONNX ``metadata_props``, TorchScript extra file ``dmdl_meta.json``, the ``meta``
entry of the slim ``pth``): ``producer``, ``dmdl_version``, ``arch``, ``two_stream``, ``height``,
``width``, ``mean``, ``std``, ``interpolation``, ``modalities``, ``modality_input``,
``feature_dim``, ``flip_averaging``, ``weights_hash``, ``method``, ``dataset``, ``trial``.

ONNX goes through torch's TorchScript-based exporter (``torch.onnx.export(dynamo=False)``,
opset 17): it needs only the ``onnx`` package (for the metadata), where the default dynamo
exporter of torch >= 2.9 also needs ``onnxscript``. TorchScript uses ``torch.jit.trace``
(deprecated by torch in favour of ``torch.export``, still the format most C++ / mobile
runtimes load).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from dmdl import __version__

from ._bridge import IMAGENET_MEAN, IMAGENET_STD, InputError, LoadedModel, config_dict, embed, load_model

FORMATS = ("onnx", "torchscript", "pth")
SLIM_FORMAT = "dmdl-slim-1"
META_FILE = "dmdl_meta.json"
OPSET = 17


class InferenceGraph(nn.Module):
    """The eval-mode network as one traceable graph (see the module docstring).

    ``forward(images)`` for a one-stream model; ``forward(images, modality)`` for a two-stream
    one, ``modality`` a (B,) integer tensor, nonzero = infrared. Returns (B, D) unit rows.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.two_stream = bool(getattr(model, "two_stream", False))

    def forward(self, images: Tensor, modality: Tensor | None = None) -> Tensor:
        if not self.two_stream:
            return self.model(images)
        m = self.model
        infrared = (modality != 0).reshape(-1, 1, 1, 1)
        stem = torch.where(infrared, m.stem_infrared(images), m.stem_visible(images))
        return embed(m.shared.pool, m.shared.bottleneck, m.shared.trunk(stem), False, False)


def export_metadata(loaded: LoadedModel) -> dict:
    """The metadata recorded with every export (see the module docstring)."""
    two = loaded.two_stream
    return {
        "producer": "dmdl", "dmdl_version": __version__, "arch": loaded.arch, "two_stream": two,
        "height": loaded.height, "width": loaded.width, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "interpolation": loaded.interpolation, "input": "images: float32 (B, 3, height, width), RGB in [0, 1], then "
                                             "(x - mean) / std",
        "modalities": ["visible", "infrared"],
        "modality_input": "modality: int64 (B,), 0 = visible, 1 = infrared (picks the stem)" if two else
        "none (one stream: both modalities share the weights)",
        "feature_dim": int(loaded.model.feat_dim), "output": "features: float32 (B, feature_dim), L2-normalised",
        "flip_averaging": "not in the graph: dmdl's evaluation averages the features of the image and its "
                          "horizontal flip, then L2-normalises",
        "weights_hash": loaded.weights_hash, "method": loaded.method, "dataset": loaded.dataset,
        "trial": loaded.trial,
    }


def _example(loaded: LoadedModel, batch: int = 2) -> tuple:
    x = torch.randn(batch, 3, loaded.height, loaded.width, device=loaded.device)
    if not loaded.two_stream:
        return (x,)
    return x, torch.tensor([i % 2 for i in range(batch)], dtype=torch.int64, device=loaded.device)


def _export_onnx(graph: InferenceGraph, loaded: LoadedModel, out: Path, meta: dict) -> None:
    try:
        import onnx
    except ImportError:
        raise ImportError("--format onnx needs the onnx package: pip install onnx (or dmdl[export])") from None
    names = ["images", "modality"] if loaded.two_stream else ["images"]
    axes = {n: {0: "batch"} for n in names + ["features"]}
    with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, _example(loaded), str(out), dynamo=False, input_names=names,
                          output_names=["features"], dynamic_axes=axes, opset_version=OPSET)
    proto = onnx.load(str(out))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v if isinstance(v, str) else json.dumps(v)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def _export_torchscript(graph: InferenceGraph, loaded: LoadedModel, out: Path, meta: dict) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, _example(loaded))
        torch.jit.save(traced, str(out), _extra_files={META_FILE: json.dumps(meta)})


def export_model(checkpoint, fmt: str, out, device: str = "cpu") -> Path:
    """Write the inference graph of ``checkpoint`` to ``out`` (exactly that file).

    Args:
        checkpoint: anything :func:`~dmdl.inference._bridge.load_model` reads.
        fmt: ``"onnx"``, ``"torchscript"`` or ``"pth"`` (a slim ``{"format", "model", "config",
            "meta"}`` dict: the model's state dict only, no optimizer, memories or pseudo-labels,
            so no tensor sized by the cluster count; :class:`dmdl.FeatureExtractor`,
            ``dmdl evaluate`` and ``dmdl export`` read it as a checkpoint).
        device: where the graph is traced (the exported graph runs anywhere).

    Returns:
        ``out`` as a Path.

    Raises:
        InputError: unknown format.
        FileNotFoundError / CheckpointError: see ``load_model``.
        ImportError: ``onnx`` missing for ``fmt="onnx"``.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    loaded = load_model(checkpoint, device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = export_metadata(loaded)
    if fmt == "pth":
        state = {k: v.detach().cpu() for k, v in loaded.model.state_dict().items()}
        torch.save({"format": SLIM_FORMAT, "model": state, "config": config_dict(loaded), "meta": meta},
                   out)
        return out
    graph = InferenceGraph(loaded.model)
    if fmt == "onnx":
        _export_onnx(graph, loaded, out, meta)
    else:
        _export_torchscript(graph, loaded, out, meta)
    return out
