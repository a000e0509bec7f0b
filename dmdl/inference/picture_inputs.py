"""The features ``dmdl visualize tsne`` draws: a checkpoint's test split run through the model,
or ``dmdl extract`` files read back. Here, beside the extractor, so that :mod:`dmdl.visualization`
only draws and never loads a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._bridge import InputError, preflight
from .extractor import FeatureExtractor
from .features import load_features
from .images import identity_from_path


def tsne_inputs(checkpoint, data_root, features_files, trial, max_images: int, device: str = "cpu"):
    """What ``dmdl visualize tsne`` draws: ``(features (N, D), modalities, identities, title,
    default output path)``, from a checkpoint's test split (both modalities, each through its
    stem) or from ``dmdl extract`` files (identities read from the paths). At most
    ``max_images`` rows, a seeded sample (seed 0) when there are more.

    Raises:
        FileNotFoundError / InputError / CheckpointError / DatasetError: bad checkpoint, dataset
            or features files; files from different models.
    """
    if features_files:
        files = [load_features(f, "--features") for f in features_files]
        if len({f.weights_hash for f in files}) > 1:
            raise InputError("--features: the files come from different models (weights hashes "
                             f"{', '.join(sorted({f.weights_hash for f in files}))})")
        feats = np.concatenate([f.features.numpy() for f in files])
        mods = [f.modality or "unknown" for f in files for _ in f.paths]
        ids = [identity_from_path(p) for f in files for p in f.paths]
        title, out = f"t-SNE of {len(files)} features file(s)", Path(features_files[0]).with_suffix(".tsne.png")
    else:
        fx = FeatureExtractor(checkpoint, device=device, progress=True)
        name = fx.loaded.dataset
        t = trial if trial is not None else fx.loaded.trial
        ds = preflight(name, data_root, t, splits=("test",))
        parts = [(fx([r.path for r in recs], m), recs) for recs, m in
                 ((ds.test_visible, "visible"), (ds.test_infrared, "infrared"))]
        feats = np.concatenate([f.numpy() for f, _ in parts])
        mods = [r.modality for _, recs in parts for r in recs]
        ids = [r.pid for _, recs in parts for r in recs]
        title = f"t-SNE of the {name} test features (trial {t})"
        out = fx.path.with_name(f"tsne_{name}_trial{t}.png")
    if len(feats) > max_images:
        keep = np.sort(np.random.default_rng(0).choice(len(feats), size=max_images, replace=False))
        feats, mods, ids = feats[keep], [mods[i] for i in keep], [ids[i] for i in keep]
    return feats, mods, ids, title, out
