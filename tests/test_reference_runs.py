"""Reference runs: a tiny deterministic run of each method, held against numbers recorded from an
earlier version of the code, so that a refactoring that changes behaviour fails here.

Each run trains on conftest's toy RegDB (12 ids) with ``--deterministic`` on one thread, with the
switches that give v0.4's behaviour (``--memory-semantics forward --resize bicubic --amp cuda``, DMDL's
``--inter-sampler redraw``): DMDL for
1 + 3 epochs (stage 2 with both anchors, the refined targets from epoch 1, the paired
inter-modality epoch 2, two ghost-BN groups), MULT for 1 + 2 epochs (both unified label spaces).

What must hold on any CPU (AVX2 and AVX-512 round differently): every epoch's cluster counts,
outliers, unified ids, association and the pseudo-label ARI (equal labels give equal ARI), the last
epoch's pseudo-labels (their MD5), the losses within 1e-4 relative, the trained model's metrics to
the second decimal.

``python tests/test_reference_runs.py`` prints the values of the current code in the form of
``RECORDED`` (to record them again after an intended change of behaviour, say so in the commit).
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

TINY = ["--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16", "--num-instances", "4",
        "--k1", "6", "--k2", "2", "--eps", "0.5", "--workers", "0", "--eval-untrained", "false",
        "--deterministic", "true",
        # v0.4's behaviour where v0.5 follows the released code by default (README, Decisions)
        "--memory-semantics", "forward", "--resize", "bicubic", "--amp", "cuda"]
RUNS = {
    "dmdl": ("regdb-cpu", ["--stage1-epochs", "1", "--stage2-epochs", "3", "--refine-from-stage2", "1",
                           "--inter-modality-from", "2", "--ghost-bn-groups", "2", "--inter-sampler", "redraw"]),
    "mult": ("regdb-cpu-mult", ["--stage1-epochs", "1", "--stage2-epochs", "2"]),
}
EXACT = ("stage", "epoch", "lr", "clusters_visible", "outliers_visible", "clusters_infrared", "outliers_infrared",
         "unified_ids", "matching", "transfer_iterations")
ARI = ("ari_visible", "ari_infrared", "ari_unified")
LOSSES = ("loss", "loss_id", "loss_cai", "loss_cross", "loss_triplet", "loss_mmd", "loss_ms", "loss_ma", "loss_oclr",
          "certainty_visible", "certainty_infrared")


def run_reference(name: str, data_root: str, out: Path) -> dict:
    """Train reference run ``name`` on one thread, deterministically; its log rows, trained metrics and
    the MD5 of the last epoch's pseudo-labels."""
    from dmdl.config import load_config
    from dmdl.engine import Engine
    from dmdl.methods import get_method

    preset, extra = RUNS[name]
    cfg = load_config(preset, TINY + extra + ["--data-root", data_root, "--output-dir", str(out)])
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = Engine(cfg, get_method(cfg)).run()
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    with open(out / "log.csv", newline="") as fh:
        rows = [{k: v for k, v in r.items() if v != "" and (k in EXACT or k in ARI or k in LOSSES)}
                for r in csv.DictReader(fh)]
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    labels = {k: hashlib.md5(np.asarray(v, dtype=np.int64).tobytes()).hexdigest()
              for k, v in sorted(ckpt["pseudo_labels"].items())}
    trained = {d: {k: round(v, 4) for k, v in results["trained"][d].items()} for d in ("v2t", "t2v")}
    return {"log": rows, "labels": labels, "trained": trained}


RECORDED = {  # recorded from main 0d9aac1 (v0.4.0) on an AMD EPYC (Zen 5, AVX-512), 1 thread
    'dmdl': {
        "log": [
            {"stage": "1", "epoch": "0", "lr": "0.00035", "clusters_visible": "6", "outliers_visible": "24", "ari_visible": "1.0", "clusters_infrared": "5", "outliers_infrared": "34", "ari_infrared": "0.9137015400955921", "loss": "4.919813871383667", "loss_id": "4.896189451217651", "loss_cai": "0.0", "loss_cross": "0.0", "loss_triplet": "0.0", "loss_mmd": "0.023624420166015625"},
            {"stage": "2", "epoch": "0", "lr": "0.00035", "clusters_visible": "6", "outliers_visible": "22", "ari_visible": "1.0", "clusters_infrared": "6", "outliers_infrared": "28", "ari_infrared": "0.7233478051133623", "unified_ids": "6", "ari_unified": "0.45070071844718335", "matching": "imca->infrared", "loss": "22.954981803894043", "loss_id": "4.223922610282898", "loss_cai": "4.413728356361389", "loss_cross": "0.0", "loss_triplet": "33.11874008178711", "loss_mmd": "-0.035175323486328125"},
            {"stage": "2", "epoch": "1", "lr": "0.00035", "clusters_visible": "7", "outliers_visible": "20", "ari_visible": "0.872275971234802", "clusters_infrared": "6", "outliers_infrared": "31", "ari_infrared": "0.7408943793590738", "unified_ids": "7", "ari_unified": "0.27368178391134346", "matching": "imca->visible", "certainty_visible": "0.8999999761581421", "certainty_infrared": "1.0", "loss": "19.014925956726074", "loss_id": "3.428467273712158", "loss_cai": "3.8187007904052734", "loss_cross": "0.0", "loss_triplet": "27.49653720855713", "loss_mmd": "-0.07116007804870605"},
            {"stage": "2", "epoch": "2", "lr": "0.00035", "clusters_visible": "8", "outliers_visible": "13", "ari_visible": "0.8264011562550184", "clusters_infrared": "4", "outliers_infrared": "39", "ari_infrared": "0.6629986244841816", "unified_ids": "4", "ari_unified": "0.3324611605555858", "matching": "imca->infrared", "certainty_visible": "1.0", "certainty_infrared": "0.9526561498641968", "loss": "46.50844383239746", "loss_id": "2.98785138130188", "loss_cai": "3.2235536575317383", "loss_cross": "0.0", "loss_triplet": "41.98490905761719", "loss_mmd": "-0.07609355449676514"},
        ],
        "labels": {"infrared": "e1e2fb81d468e6a9b3d41a2698e8453a", "visible": "c04cfca70aeeb41abf6cd3864784f6b4"},
        "trained": {"v2t": {"rank1": 21.6667, "rank5": 71.6667, "rank10": 83.3333, "rank20": 91.6667, "mAP": 28.5052, "mINP": 22.3704}, "t2v": {"rank1": 28.3333, "rank5": 60.0, "rank10": 76.6667, "rank20": 93.3333, "mAP": 33.7133, "mINP": 21.6463}},
    },
    'mult': {
        "log": [
            {"stage": "1", "epoch": "0", "lr": "0.00035", "clusters_visible": "7", "outliers_visible": "19", "ari_visible": "0.9004262243324307", "clusters_infrared": "9", "outliers_infrared": "19", "ari_infrared": "0.6582519647535128", "loss": "10.033122539520264", "loss_ms": "10.033122539520264", "loss_ma": "0.0", "loss_oclr": "0.0"},
            {"stage": "2", "epoch": "0", "lr": "0.00035", "clusters_visible": "6", "outliers_visible": "16", "ari_visible": "1.0", "clusters_infrared": "6", "outliers_infrared": "32", "ari_infrared": "0.4116778861730084", "unified_ids": "6", "ari_unified": "0.46918402208911664", "matching": "mult->rgb", "loss": "32.480770111083984", "loss_ms": "10.689161539077759", "loss_ma": "8.28325366973877", "loss_oclr": "13.508354187011719", "transfer_iterations": "6+6"},
            {"stage": "2", "epoch": "1", "lr": "0.00035", "clusters_visible": "6", "outliers_visible": "25", "ari_visible": "0.919270737028956", "clusters_infrared": "3", "outliers_infrared": "48", "ari_infrared": "0.037993446715556246", "unified_ids": "3", "ari_unified": "0.0635494636221036", "matching": "mult->ir", "loss": "21.53221607208252", "loss_ms": "9.058440685272217", "loss_ma": "4.381216287612915", "loss_oclr": "8.092559099197388", "transfer_iterations": "5+6"},
        ],
        "labels": {"cm_label1": "2fad15651ecb92bc39b5000b93c2c844", "cm_label2": "7d90f095dd47d6b19244d4d3ae14e2f6", "label1": "82ca376a08a2df8ee0b66d71129abe8b", "label2": "325908ff08e3c84df0d89fc305fbc645"},
        "trained": {"v2t": {"rank1": 1.6667, "rank5": 58.3333, "rank10": 76.6667, "rank20": 88.3333, "mAP": 26.3383, "mINP": 21.5566}, "t2v": {"rank1": 18.3333, "rank5": 53.3333, "rank10": 78.3333, "rank20": 90.0, "mAP": 26.2867, "mINP": 19.3667}},
    },
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_reference_run_is_unchanged(name, toy_regdb, tmp_path):
    got = run_reference(name, str(toy_regdb), tmp_path / name)
    want = RECORDED[name]
    assert len(got["log"]) == len(want["log"])
    for g, w in zip(got["log"], want["log"]):
        where = f"stage {w['stage']} epoch {w['epoch']}"
        assert {k: g.get(k) for k in EXACT if k in w} == {k: w[k] for k in EXACT if k in w}, where
        for k in ARI:
            if k in w:
                assert float(g[k]) == pytest.approx(float(w[k]), abs=1e-9), f"{where}: {k}"
        for k in LOSSES:
            if k in w:
                assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4, abs=1e-6), f"{where}: {k}"
    assert got["labels"] == want["labels"]
    for d in ("v2t", "t2v"):
        for k, v in want["trained"][d].items():
            assert got["trained"][d][k] == pytest.approx(v, abs=0.01), f"trained {d} {k}"


if __name__ == "__main__":  # print the current code's values (see the module docstring)
    import contextlib
    import tempfile

    from dmdl.data.toy import make_toy_dataset

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        root = make_toy_dataset(Path(tmp) / "RegDB", layout="regdb", num_ids=12, seed=0)  # conftest's toy_regdb
        values = {n: run_reference(n, str(root), Path(tmp) / n) for n in sorted(RUNS)}
    print(json.dumps(values, indent=1))
    sys.exit(0)
