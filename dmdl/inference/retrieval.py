"""``dmdl search``'s work: query and gallery features (extracted, or read from ``dmdl extract``
files), ranked lists as JSON, one rank-list picture per query and an ``index.html``.

Output folder: ``ranking.json`` (see :func:`search_and_write`), ``ranklists/NNNN.png`` (the
query, then its top-k with distances and modality tags; green / red borders when the
identities are known from a dataset layout, see
:func:`~dmdl.inference.images.identity_from_path`) and ``index.html`` showing them all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ._bridge import InputError
from .features import load_features
from .images import identity_from_path
from .search import k_reciprocal_distances, rank_gallery, squared_distances

RANKING_NAME = "ranking.json"
PICTURES_DIR = "ranklists"


@dataclass
class Side:
    """The query or the gallery of a search: (N, D) unit features, their image names, modality
    (None: unknown), the identities read from the paths, and the model that made them."""

    features: torch.Tensor
    names: List[str]
    modality: Optional[str]
    weights_hash: str
    source: str  # how messages name it (--query, --gallery-features FILE)

    @property
    def identities(self) -> List[Optional[int]]:
        return [identity_from_path(n) for n in self.names]


def side_from_images(extractor, specs, modality: Optional[str], what: str, log=print) -> Side:
    """Extract the features of the images named by ``specs`` (files, folders, globs); an
    unreadable image is reported through ``log`` and skipped.

    Raises:
        InputError: see :meth:`dmdl.FeatureExtractor.extract` (no image, none readable, bad modality).
    """
    res = extractor.extract(list(specs), modality, on_error="skip", desc=what.lstrip("-"))
    for name, why in res.skipped:
        log(f"warning: {what}: skipped an unreadable image: {why}")
    return Side(res.features, res.names, modality, extractor.weights_hash, what)


def side_from_file(path, what: str, modality: Optional[str] = None) -> Side:
    """The features of a ``dmdl extract`` file; ``modality`` (when given) must be the file's.

    Raises:
        FileNotFoundError / InputError: see :func:`~dmdl.inference.features.load_features`; a
            modality that differs from the file's.
    """
    f = load_features(path, what)
    if modality is not None and f.modality is not None and modality != f.modality:
        raise InputError(f"{what} {path} holds {f.modality} features, not {modality}")
    return Side(f.features, f.paths, f.modality or modality, f.weights_hash, f"{what} {path}")


def check_same_model(query: Side, gallery: Side, weights_hash: Optional[str] = None) -> None:
    """Query and gallery features (and the checkpoint, when given) must come from one model.

    Raises:
        InputError: the message names the side from another model and both hashes.
    """
    ref, ref_name = (weights_hash, "the checkpoint") if weights_hash else (query.weights_hash, query.source)
    for side in (query, gallery):
        if side.weights_hash != ref:
            raise InputError(f"{side.source} was extracted with another model (weights hash {side.weights_hash}, "
                             f"{ref_name}'s is {ref}); extract both with the same checkpoint")
    if query.features.shape[1] != gallery.features.shape[1]:
        raise InputError(f"{query.source} has {query.features.shape[1]}-dim features, {gallery.source} "
                         f"{gallery.features.shape[1]}-dim")


def search_and_write(out_dir, query: Side, gallery: Side, topk: int = 10, rerank: Optional[dict] = None,
                     pictures: bool = True) -> dict:
    """Rank the gallery for every query and write the results to ``out_dir``.

    Args:
        topk: gallery images listed (and drawn) per query (at most the gallery size).
        rerank: None, or ``{"k1", "k2", "lam"}``: k-reciprocal re-ranking
            (:func:`~dmdl.inference.search.k_reciprocal_distances`).

    Returns:
        The ``ranking.json`` payload: ``distance`` (what the distances are), ``rerank``,
        ``weights_hash``, ``query_modality``, ``gallery_modality``, ``topk`` and ``queries``: one
        dict per query with ``query`` (name), ``identity``, ``picture`` (relative to
        ``out_dir``; absent without pictures) and ``ranked``: ``topk`` dicts ``path``,
        ``distance``, ``identity``, nearest first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rerank is None:
        dist = squared_distances(query.features, gallery.features)
        what = "squared Euclidean distance of the L2-normalised features (2 - 2 cos)"
    else:
        dist = k_reciprocal_distances(query.features, gallery.features, **rerank)
        what = ("k-reciprocal re-ranked distance (Zhong et al. 2017): (1 - lambda) Jaccard + lambda "
                "(2 - 2 cos) / its row maximum over query + gallery")
    idx, d = rank_gallery(dist, topk)
    q_ids, g_ids = query.identities, gallery.identities
    queries = []
    for i, name in enumerate(query.names):
        ranked = [{"path": gallery.names[j], "distance": float(v), "identity": g_ids[j]}
                  for j, v in zip(idx[i].tolist(), d[i].tolist())]
        queries.append({"query": name, "identity": q_ids[i], "ranked": ranked})
    payload = {"distance": what, "rerank": None if rerank is None else {"k1": rerank["k1"], "k2": rerank["k2"],
                                                                          "lambda": rerank["lam"]},
               "weights_hash": query.weights_hash, "query_modality": query.modality,
               "gallery_modality": gallery.modality, "topk": int(idx.shape[1]), "queries": queries}
    if pictures:
        _draw(out_dir, payload)
    (out_dir / RANKING_NAME).write_text(json.dumps(payload, indent=2))
    return payload


def _draw(out_dir: Path, payload: dict) -> None:
    from dmdl.visualization.ranklist import Entry, draw_row, write_index

    (out_dir / PICTURES_DIR).mkdir(exist_ok=True)
    qm, gm = payload["query_modality"], payload["gallery_modality"]
    for i, q in enumerate(payload["queries"]):
        row = draw_row(Entry(q["query"], qm, q["identity"]),
                       [Entry(r["path"], gm, r["identity"], r["distance"]) for r in q["ranked"]])
        rel = f"{PICTURES_DIR}/{i:04d}.png"
        row.save(out_dir / rel, format="PNG")
        q["picture"] = rel
    title = f"dmdl search: {len(payload['queries'])} {qm or ''} queries, top {payload['topk']} {gm or ''} gallery"
    write_index(out_dir, payload["queries"], title + (" (re-ranked)" if payload["rerank"] else ""))
