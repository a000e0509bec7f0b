"""Ranking and k-reciprocal re-ranking (dmdl.inference.search) and `dmdl search`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dmdl.cli import main
from dmdl.errors import InputError
from dmdl.inference.features import save_features
from dmdl.inference.search import k_reciprocal_distances, rank_gallery, squared_distances
from dmdl.visualization import ranklist


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rerank_numpy(q, g, k1, k2, lam, jaccard=False):
    """Zhong et al., CVPR 2017 (Eq. 4-14 and the authors' re_ranking code), written here in NumPy
    (float64, loops) with the conventions dmdl documents in k_reciprocal_distances:
    - X = queries then gallery; d = squared Euclidean distance of the unit features;
    - R(p, k1) from the k1 + 1 nearest (p included); the half sets from round((k1 + 1) / 2) + 1
      nearest (the paper's round(k1 / 2) + 1 for even k1); added when > 2/3 of them lie in R;
    - V weights exp(-d) normalised over the expanded set (the paper: exp of the row-normalised d);
    - query expansion: mean of the V rows of the min(k2, k1 + 1) nearest, for every row of X;
    - d_J = 1 - s / (2 - s), s = sum of the minima over all columns;
    - final (1 - lam) d_J + lam d / max of the probe's row of d over X (``jaccard``: d_J too)."""
    x = np.concatenate([q, g]).astype(np.float64)
    n, nq = len(x), len(q)
    d = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    rank = np.argsort(d, axis=1, kind="stable")
    kk = k1 + 1
    half = min(round(kk / 2) + 1, kk)

    def reciprocal(i, k):
        return [j for j in rank[i, :k] if i in rank[j, :k]]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, kk)
        expanded = list(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
                expanded += rc
        e = np.unique(expanded)
        w = np.exp(-d[i, e])
        v[i, e] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :min(k2, kk)]].mean(axis=0) for i in range(n)])
    jac = np.empty((nq, n))
    for i in range(nq):
        s = np.minimum(v[i][None, :], v).sum(axis=1)
        jac[i] = 1.0 - s / (2.0 - s)
    orig = d[:nq] / d[:nq].max(axis=1, keepdims=True)
    final = ((1.0 - lam) * np.maximum(jac, 0.0) + lam * orig)[:, nq:]
    return (final, np.maximum(jac, 0.0)[:, nq:]) if jaccard else final


@pytest.mark.parametrize("nq, ng, topk", [(7, 50, 10), (3, 5, 10), (1, 30, 1)])
def test_ranked_lists_equal_a_brute_force_argsort(nq, ng, topk):
    rng = np.random.default_rng(nq * 100 + ng)
    q, g = _unit(rng, nq, 16), _unit(rng, ng, 16)
    idx, dist = rank_gallery(squared_distances(torch.from_numpy(q), torch.from_numpy(g)), topk)
    brute = ((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1)
    k = min(topk, ng)
    np.testing.assert_array_equal(idx.numpy(), np.argsort(brute, axis=1, kind="stable")[:, :k])
    np.testing.assert_allclose(dist.numpy(), np.sort(brute, axis=1)[:, :k], atol=1e-5)


def test_ties_keep_the_gallery_order():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    idx, dist = rank_gallery(squared_distances(q, g))
    assert idx.tolist() == [[1, 3, 0, 2]] and dist.tolist() == [[0.0, 0.0, 2.0, 2.0]]


@pytest.mark.parametrize("nq, ng, k1, k2, lam", [
    (5, 30, 6, 3, 0.3),   # even k1: the paper's neighbourhoods exactly
    (4, 25, 5, 2, 0.3),   # odd k1: the documented half-set size
    (3, 20, 4, 1, 0.5),   # k2 = 1: no query expansion
    (6, 34, 20, 6, 0.3),  # the paper's defaults
])
def test_reranking_equals_a_numpy_rederivation(nq, ng, k1, k2, lam):
    rng = np.random.default_rng(k1 * 10 + k2)
    # clustered features (as identities), so that the k-reciprocal sets are not trivial
    centers = _unit(rng, 5, 8)
    labels = rng.integers(0, 5, nq + ng)
    x = centers[labels] + 0.35 * rng.standard_normal((nq + ng, 8)).astype(np.float32)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    q, g = x[:nq], x[nq:]
    got = k_reciprocal_distances(torch.from_numpy(q), torch.from_numpy(g), k1=k1, k2=k2, lam=lam)
    ref, jac = rerank_numpy(q, g, k1, k2, lam, jaccard=True)
    assert got.shape == (nq, ng) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-5)
    assert (jac < 0.9).mean() > 0.1  # the Jaccard term is not trivial: many pairs share neighbours


def test_reranking_rejects_bad_parameters():
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    with pytest.raises(InputError, match="lower k1"):
        k_reciprocal_distances(x[:2], x[2:], k1=6)
    with pytest.raises(InputError, match="lambda"):
        k_reciprocal_distances(x[:2], x[2:], k1=2, lam=1.5)
    with pytest.raises(InputError, match="k2"):
        k_reciprocal_distances(x[:2], x[2:], k1=2, k2=0)


def _features_file(path, x, names, modality, digest="abc"):
    save_features(path, torch.from_numpy(x), names, modality, digest, "ckpt.pth", 64, 32)
    return str(path)


def _images(folder, n, seed):
    """n small images in a RegDB-like layout folder/<pid>/<name>_<pid>.bmp (identities known)."""
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        pid = 100 + i % 3
        sub = folder / str(pid)
        sub.mkdir(parents=True, exist_ok=True)
        p = sub / f"img_{seed}_{i:03d}_{pid}.bmp"
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(p)
        names.append(str(p))
    return names


@pytest.mark.parametrize("rerank", [False, True])
def test_search_cli_from_features_files(rerank, tmp_path):
    rng = np.random.default_rng(3)
    qn, gn = _images(tmp_path / "q", 4, 1), _images(tmp_path / "g", 24, 2)
    q, g = _unit(rng, 4, 12), _unit(rng, 24, 12)
    args = ["search", "--query-features", _features_file(tmp_path / "q.npz", q, qn, "infrared"),
            "--gallery-features", _features_file(tmp_path / "g.npz", g, gn, "visible"), "--topk", "5",
            "--out", str(tmp_path / "out")]
    if rerank:
        args += ["--rerank", "--k1", "6", "--k2", "3"]
    assert main(args) == 0
    res = json.loads((tmp_path / "out" / "ranking.json").read_text())
    if rerank:
        dist = rerank_numpy(q, g, 6, 3, 0.3)
        assert res["rerank"] == {"k1": 6, "k2": 3, "lambda": 0.3}
    else:
        dist = ((q[:, None, :].astype(np.float64) - g[None]) ** 2).sum(-1)
        assert res["rerank"] is None
    assert res["query_modality"] == "infrared" and res["gallery_modality"] == "visible" and res["topk"] == 5
    html = (tmp_path / "out" / "index.html").read_text()
    for i, entry in enumerate(res["queries"]):
        order = np.argsort(dist[i], kind="stable")[:5]
        assert [r["path"] for r in entry["ranked"]] == [gn[j] for j in order]
        np.testing.assert_allclose([r["distance"] for r in entry["ranked"]], dist[i, order], atol=2e-5)
        assert entry["query"] == qn[i] and entry["identity"] == 100 + i % 3
        assert [r["identity"] for r in entry["ranked"]] == [100 + j % 3 for j in order]
        assert qn[i] in html and entry["picture"] in html
        with Image.open(tmp_path / "out" / entry["picture"]) as im:
            im.load()
            assert im.format == "PNG" and im.size == _row_size(5)


def _row_size(k):
    """The rank-list row size from the layout constants the module documents."""
    cw, ch = ranklist.CELL
    b, m = ranklist.BORDER, ranklist.MARGIN
    return (2 * m + (k + 1) * (cw + 2 * b) + ranklist.SEPARATOR + (k - 1) * ranklist.GAP,
            2 * m + ch + 2 * b + ranklist.CAPTION)


def test_search_cli_with_images_equals_extract_then_search(trained_runs, toy_regdb, tmp_path):
    ckpt = str(trained_runs["mult"])
    q_dir, g_dir = toy_regdb / "Visible", toy_regdb / "Thermal"
    pids = sorted(p.name for p in q_dir.iterdir())[:2]
    queries = [str(sorted((q_dir / pids[0]).glob("*.bmp"))[0]), str(sorted((q_dir / pids[1]).glob("*.bmp"))[0])]
    gallery = [str(g_dir / p) for p in pids] + [str(g_dir / sorted(p.name for p in g_dir.iterdir())[5])]
    assert main(["search", "--checkpoint", ckpt, "--query", *queries, "--query-modality", "visible", "--gallery",
                 *gallery, "--gallery-modality", "infrared", "--topk", "30", "--out", str(tmp_path / "a"),
                 "--no-pictures"]) == 0
    assert main(["extract", "--checkpoint", ckpt, "--images", *gallery, "--modality", "infrared", "--out",
                 str(tmp_path / "g.npz")]) == 0
    assert main(["search", "--checkpoint", ckpt, "--query", *queries, "--query-modality", "visible",
                 "--gallery-features", str(tmp_path / "g.npz"), "--topk", "30", "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "ranking.json").read_text())
    b = json.loads((tmp_path / "b" / "ranking.json").read_text())
    assert not (tmp_path / "a" / "index.html").exists() and (tmp_path / "b" / "index.html").exists()
    assert a["topk"] == 30 and len(a["queries"][0]["ranked"]) == 30  # 3 identities x 10 images
    for qa, qb in zip(a["queries"], b["queries"]):
        assert [r["path"] for r in qa["ranked"]] == [r["path"] for r in qb["ranked"]]
        assert qa["identity"] == int(qa["query"].split("_")[-1][:-4])  # RegDB layout: identities known


@pytest.mark.parametrize("case, expected", [
    ("other model", "was extracted with another model"),
    ("checkpoint of another model", "the checkpoint's is"),
    ("no gallery", "give either --gallery images or --gallery-features"),
    ("images without checkpoint", "--query images need --checkpoint"),
    ("not a features file", "is not a dmdl features file"),
    ("modality differs", "holds infrared features, not visible"),
    ("missing checkpoint", "checkpoint not found"),
    ("no images", "no image files"),
    ("modality the model lacks", "modality 'thermal'"),
    ("topk 0", "--topk must be >= 1"),
])
def test_search_cli_errors_are_one_line(case, expected, trained_runs, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = _unit(rng, 4, 8)
    names = [f"/x/{i}.png" for i in range(4)]
    qf = _features_file(tmp_path / "q.npz", x, names, "infrared", "aaaa")
    gf = _features_file(tmp_path / "g.npz", x, names, "visible", "bbbb")
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "junk.npz").write_text("{}")
    args = {
        "other model": ["--query-features", qf, "--gallery-features", gf],
        "checkpoint of another model": ["--checkpoint", str(trained_runs["dmdl"]), "--query-features", qf,
                                        "--gallery-features", _features_file(tmp_path / "g2.npz", x, names, None,
                                                                             "aaaa")],
        "no gallery": ["--query-features", qf],
        "images without checkpoint": ["--query", str(empty), "--gallery-features", gf],
        "not a features file": ["--query-features", str(tmp_path / "junk.npz"), "--gallery-features", gf],
        "modality differs": ["--query-features", qf, "--query-modality", "visible", "--gallery-features", gf],
        "missing checkpoint": ["--checkpoint", str(tmp_path / "no.pth"), "--query", str(empty),
                               "--gallery-features", gf],
        "no images": ["--checkpoint", str(trained_runs["dmdl"]), "--query", str(empty), "--gallery-features", gf],
        "modality the model lacks": ["--checkpoint", str(trained_runs["mult"]), "--query", str(tmp_path / "q.npz"),
                                     "--query-modality", "thermal", "--gallery-features", gf],
        "topk 0": ["--query-features", qf, "--gallery-features", gf, "--topk", "0"],
    }[case]
    rc = main(["search", *args, "--out", str(tmp_path / "out")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("dmdl search")]
    assert rc == 2 and len(err) == 1 and err[0].startswith("dmdl search: error: ") and expected in err[0], err
    assert not (tmp_path / "out" / "ranking.json").exists()
