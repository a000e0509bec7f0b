"""Features of any images from a trained dmdl checkpoint (``dmdl.FeatureExtractor``).

The features are those of the test protocol (docs/dmdl.md#A11): each image is decoded as
RGB, resized to the checkpoint's ``height x width`` (bicubic for DMDL, bilinear for MULT: the
checkpoint's ``Config.resize()``), normalised with the ImageNet
mean/std (:func:`dmdl.data.transforms.test_transform`), embedded in eval mode together with
its horizontal flip, the two L2-normalised features averaged and the mean L2-normalised
again. A two-stream model (MULT, docs/mult.md#B2) runs the images through the stem of the
modality given. Fed to the metric functions, these features give ``dmdl evaluate``'s numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from ._bridge import MODALITIES, ImageReadError, InputError, LoadedModel, flip_width, load_model, progress_bar, \
    read_image, test_transform
from .images import Item, as_image_items


@dataclass
class Features:
    """What :meth:`FeatureExtractor.extract` returns.

    Attributes:
        features: (N, D) float32 CPU tensor, L2-normalised rows, one per image that was read.
        names: the N images' names: the file path, or ``<PIL image i>`` / ``<array i>`` /
            ``<tensor i>`` for images given in memory (``i`` counts the inputs).
        modality: the modality the images were embedded as (None: not given, one-stream model).
        skipped: ``(name, reason)`` of every image that could not be read.
    """

    features: torch.Tensor
    names: List[str]
    modality: Optional[str]
    skipped: List[Tuple[str, str]] = field(default_factory=list)


class _Decoded(Dataset):
    """(name, path or PIL image) items -> (image tensor, index, error message or "", missing file)."""

    def __init__(self, items: Sequence[Item], height: int, width: int, interpolation: str = "bicubic"):
        self.items = list(items)
        self.transform = test_transform(height, width, interpolation)
        self.shape = (3, height, width)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        src = self.items[i][1]
        try:
            img = read_image(src) if isinstance(src, str) else src
            return self.transform(img), i, "", False
        except (FileNotFoundError, ImageReadError) as exc:
            return torch.zeros(self.shape), i, str(exc), isinstance(exc, FileNotFoundError)


class FeatureExtractor:
    """Embed images with a trained dmdl model, exactly as its evaluation does.

    Args:
        checkpoint: a ``checkpoint.pth`` of ``dmdl train`` (or its run directory), a
            ``test_selected.pth``, or the slim ``pth`` of ``dmdl export``; one- or two-stream,
            DMDL or MULT. The model is rebuilt from the config stored in it.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        batch_size: images per forward pass (64, as ``dmdl evaluate``).
        workers: DataLoader processes decoding image files (0: in this process).
        progress: show a progress bar (on stderr) while extracting.

    Attributes:
        model, config, weights_hash, path: see :class:`~dmdl.inference._bridge.LoadedModel`.
        height, width: the input size in pixels.
        two_stream: whether ``modality`` picks a stem.
        feature_dim: D.

    Raises:
        FileNotFoundError / CheckpointError: see :func:`~dmdl.inference._bridge.load_model`.

    Example::

        fx = dmdl.FeatureExtractor("runs/regdb-cpu-mult/checkpoint.pth")
        f = fx(["a.bmp", "b.bmp"], modality="infrared")   # (2, 1280) float32, unit rows
    """

    def __init__(self, checkpoint, device: str = "cpu", batch_size: int = 64, workers: int = 0,
                 progress: bool = False):
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded: LoadedModel = load_model(checkpoint, device)
        self.model = self.loaded.model
        self.config = self.loaded.config
        self.weights_hash = self.loaded.weights_hash
        self.path: Path = self.loaded.path
        self.height, self.width = self.loaded.height, self.loaded.width
        self.two_stream = self.loaded.two_stream
        self.feature_dim = int(self.model.feat_dim)
        self.batch_size, self.workers, self.progress = batch_size, workers, progress

    def check_modality(self, modality: Optional[str]) -> Optional[str]:
        """``modality`` if this model can embed it (a two-stream model needs one).

        Raises:
            InputError: not ``"visible"``/``"infrared"``/None, or None for a two-stream model.
        """
        if modality is not None and modality not in MODALITIES:
            raise InputError(f"modality {modality!r}: the model knows the modalities 'visible' and 'infrared'")
        if modality is None and self.two_stream:
            raise InputError(f"{self.path} is a two-stream model: give the images' modality "
                             "('visible' or 'infrared') to pick its stem")
        return modality

    @torch.no_grad()
    def _embed(self, x: torch.Tensor, modality: Optional[str]) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D): flip-averaged, L2-normalised (as extract_features does)."""
        if self.two_stream:
            def net(t):
                return self.model(t, modality)
        else:
            net = self.model
        f = net(x).float()
        f = (f + net(flip_width(x)).float()) / 2
        return F.normalize(f, dim=1)

    def extract(self, images, modality: Optional[str] = None, on_error: str = "raise",
                desc: str = "extract") -> Features:
        """Features of ``images`` (see :func:`~dmdl.inference.images.as_image_items` for what
        is accepted: paths, folders, globs, PIL images, uint8 arrays, tensors, lists of them).

        Args:
            modality: ``"visible"`` or ``"infrared"``: the stem a two-stream model uses
                (required there); a one-stream model embeds both modalities with the same
                weights and only records it.
            on_error: ``"raise"``: an unreadable image file raises; ``"skip"``: it is left out
                and listed in ``Features.skipped``.

        Returns:
            :class:`Features` (rows in the order of the inputs, folders sorted).

        Raises:
            InputError: bad inputs or modality; no image at all; with ``on_error="raise"`` an
                unreadable image (:class:`~dmdl.data.loading.ImageReadError`); with ``"skip"``,
                no image readable.
            FileNotFoundError: a listed file vanished, with ``on_error="raise"``.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        modality = self.check_modality(modality)
        items = as_image_items(images)
        if not items:
            raise InputError("no image given")
        in_memory = any(not isinstance(src, str) for _, src in items)
        decoded = _Decoded(items, self.height, self.width, self.loaded.interpolation)
        loader = DataLoader(decoded, batch_size=self.batch_size, shuffle=False,
                            num_workers=0 if in_memory else self.workers)
        feats, names, skipped = [], [], []
        bar = progress_bar(loader, desc, enabled=self.progress)
        for x, idx, errors, missing in bar:
            ok = [j for j, e in enumerate(errors) if not e]
            for j, e in enumerate(errors):
                if e:
                    if on_error == "raise":
                        raise (FileNotFoundError if missing[j] else ImageReadError)(e)
                    skipped.append((items[int(idx[j])][0], e))
            if ok:
                feats.append(self._embed(x[ok].to(self.loaded.device), modality).cpu())
                names += [items[int(idx[j])][0] for j in ok]
        if not feats:
            raise InputError(f"none of the {len(items)} images could be read (first: {skipped[0][1]})")
        return Features(torch.cat(feats), names, modality, skipped)

    def __call__(self, images, modality: Optional[str] = None) -> torch.Tensor:
        """(B, D) float32 CPU tensor of L2-normalised features, one row per input image in order
        (see :meth:`extract`; an unreadable image raises)."""
        return self.extract(images, modality, on_error="raise").features
