"""After training: features of any images, cross-modality search, export.

- :class:`FeatureExtractor` (also ``dmdl.FeatureExtractor``): a checkpoint's model applied to
  paths, folders, PIL images, arrays or tensors, exactly as its evaluation does.
- :mod:`dmdl.inference.search`: distances, ranked lists, k-reciprocal re-ranking.
- :mod:`dmdl.inference.retrieval`: ``dmdl search`` (JSON, rank-list pictures, ``index.html``).
- :mod:`dmdl.inference.features`: the ``.npz`` features file of ``dmdl extract``.
- :mod:`dmdl.inference.evaluation`: the test protocol with re-ranking and pictures (``dmdl evaluate``).
- :mod:`dmdl.inference.export`: ONNX, TorchScript and slim ``pth`` exports.

Names are imported on first use (torch and the training code load then).
"""

from dmdl.lazy import lazy_attributes

_LAZY = {
    "FeatureExtractor": "extractor", "Features": "extractor",
    "squared_distances": "search", "rank_gallery": "search", "k_reciprocal_distances": "search",
    "save_features": "features", "load_features": "features",
    "export_model": "export", "InferenceGraph": "export",
    "evaluate_protocol": "evaluation", "load_model": "_bridge",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, {name: f".{module}" for name, module in _LAZY.items()})
