"""Reference runs: a tiny deterministic run of each method, held against numbers recorded from an
earlier version of the code, so that a refactoring that changes behaviour fails here.

Each run trains on conftest's toy RegDB (12 ids) with ``--deterministic`` on one thread, with the
switches that give v0.4's behaviour (``--memory-semantics forward --resize bicubic --amp cuda``, DMDL's
``--inter-sampler redraw``): DMDL for
1 + 3 epochs (stage 2 with both anchors, the refined targets from epoch 1, the paired
inter-modality epoch 2, two ghost-BN groups), MULT for 1 + 2 epochs (both unified label spaces).

What must hold on any CPU (AVX2 and AVX-512 round differently): every epoch's cluster counts,
outliers, unified ids, association and the pseudo-label ARI (equal labels give equal ARI), the last
epoch's pseudo-labels (their MD5), the losses within 1e-3 relative, the trained model's metrics
within 0.1 points. The runs use a learning rate of 2e-5: Adam's first steps move every weight by
about the learning rate whatever the size of its gradient, so a gradient that is zero but for float
rounding (a bias followed by BatchNorm) takes a step of +-lr whose sign is the rounding's; at the
presets' 3.5e-4 two thread counts (a stand-in for two CPUs) already part after two steps, at 2e-5
their losses stay within 2.4e-4 of each other and their labels equal (measured here).

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
        "--memory-semantics", "forward", "--resize", "bicubic", "--amp", "cuda",
        "--lr", "2e-5"]  # see the module docstring
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


RECORDED = {  # recorded from main 1d100b0 (v0.4.0's code) on an AMD EPYC (Zen 5, AVX-512), 1 thread
    'dmdl': {
        "log": [
            {"stage": "1", "epoch": "0", "lr": "2e-05", "clusters_visible": "6", "outliers_visible": "24", "ari_visible": "1.0", "clusters_infrared": "5", "outliers_infrared": "34", "ari_infrared": "0.9137015400955921", "loss": "5.023669719696045", "loss_id": "4.979708433151245", "loss_cai": "0.0", "loss_cross": "0.0", "loss_triplet": "0.0", "loss_mmd": "0.043961286544799805"},
            {"stage": "2", "epoch": "0", "lr": "2e-05", "clusters_visible": "7", "outliers_visible": "18", "ari_visible": "0.8878711581871853", "clusters_infrared": "7", "outliers_infrared": "27", "ari_infrared": "0.6105544422177689", "unified_ids": "7", "ari_unified": "0.21007042449032473", "matching": "imca->infrared", "loss": "23.215624809265137", "loss_id": "3.5806357860565186", "loss_cai": "3.8735369443893433", "loss_cross": "0.0", "loss_triplet": "35.471519470214844", "loss_mmd": "-0.037538886070251465"},
            {"stage": "2", "epoch": "1", "lr": "2e-05", "clusters_visible": "7", "outliers_visible": "19", "ari_visible": "0.8838568039375376", "clusters_infrared": "7", "outliers_infrared": "28", "ari_infrared": "0.5890959109666125", "unified_ids": "7", "ari_unified": "0.20503371244790183", "matching": "imca->visible", "certainty_visible": "0.7560974955558777", "certainty_infrared": "0.9062486290931702", "loss": "23.369866371154785", "loss_id": "3.6995667219161987", "loss_cai": "4.550017595291138", "loss_cross": "0.0", "loss_triplet": "34.91201400756836", "loss_mmd": "-0.06071627140045166"},
            {"stage": "2", "epoch": "2", "lr": "2e-05", "clusters_visible": "7", "outliers_visible": "15", "ari_visible": "0.9008785762559135", "clusters_infrared": "8", "outliers_infrared": "24", "ari_infrared": "0.5590800439304865", "unified_ids": "8", "ari_unified": "0.2984229720470956", "matching": "imca->infrared", "certainty_visible": "0.8321316242218018", "certainty_infrared": "0.6614508628845215", "loss": "68.3115177154541", "loss_id": "4.709355592727661", "loss_cai": "5.843693494796753", "loss_cross": "0.0", "loss_triplet": "60.735103607177734", "loss_mmd": "-0.05478954315185547"},
        ],
        "labels": {"infrared": "3af2192cc61f70abd2759ec7f9990e70", "visible": "81974cd6607301317e37fb64782264a0"},
        "trained": {"v2t": {"rank1": 20.0, "rank5": 61.6667, "rank10": 93.3333, "rank20": 100.0, "mAP": 26.7338, "mINP": 21.5889}, "t2v": {"rank1": 35.0, "rank5": 53.3333, "rank10": 76.6667, "rank20": 88.3333, "mAP": 35.0771, "mINP": 20.8272}},
    },
    'mult': {
        "log": [
            {"stage": "1", "epoch": "0", "lr": "2e-05", "clusters_visible": "7", "outliers_visible": "19", "ari_visible": "0.9004262243324307", "clusters_infrared": "9", "outliers_infrared": "19", "ari_infrared": "0.6582519647535128", "loss": "10.08756685256958", "loss_ms": "10.08756685256958", "loss_ma": "0.0", "loss_oclr": "0.0"},
            {"stage": "2", "epoch": "0", "lr": "2e-05", "clusters_visible": "7", "outliers_visible": "19", "ari_visible": "0.8818528733895039", "clusters_infrared": "6", "outliers_infrared": "32", "ari_infrared": "0.2749863462588749", "unified_ids": "7", "ari_unified": "0.45839580209895053", "matching": "mult->rgb", "loss": "36.335702896118164", "loss_ms": "11.839828968048096", "loss_ma": "8.647767066955566", "loss_oclr": "15.84810495376587", "transfer_iterations": "6+6"},
            {"stage": "2", "epoch": "1", "lr": "2e-05", "clusters_visible": "6", "outliers_visible": "23", "ari_visible": "0.8847103933930612", "clusters_infrared": "3", "outliers_infrared": "46", "ari_infrared": "0.28887629094673534", "unified_ids": "3", "ari_unified": "0.22460767775903492", "matching": "mult->ir", "loss": "23.024588584899902", "loss_ms": "10.869556903839111", "loss_ma": "4.8691794872283936", "loss_oclr": "7.285852909088135", "transfer_iterations": "5+6"},
        ],
        "labels": {"cm_label1": "dbe4bb8da35d7f18ba296c045dcdef45", "cm_label2": "ee3ac1f166825d4d71dcd71d4d605f54", "label1": "f7f9bb7764b351bd383ffb2a4c4a2eed", "label2": "d3c3454d4084b401fe2ab671c9127fd5"},
        "trained": {"v2t": {"rank1": 10.0, "rank5": 56.6667, "rank10": 76.6667, "rank20": 83.3333, "mAP": 27.7894, "mINP": 21.4758}, "t2v": {"rank1": 28.3333, "rank5": 46.6667, "rank10": 65.0, "rank20": 93.3333, "mAP": 32.698, "mINP": 22.0446}},
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
                assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-3, abs=1e-6), f"{where}: {k}"
    assert got["labels"] == want["labels"]
    for d in ("v2t", "t2v"):
        for k, v in want["trained"][d].items():
            assert got["trained"][d][k] == pytest.approx(v, abs=0.1), f"trained {d} {k}"


if __name__ == "__main__":  # print the current code's values (see the module docstring)
    import contextlib
    import tempfile

    from dmdl.data.toy import make_toy_dataset

    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        root = make_toy_dataset(Path(tmp) / "RegDB", layout="regdb", num_ids=12, seed=0)  # conftest's toy_regdb
        values = {n: run_reference(n, str(root), Path(tmp) / n) for n in sorted(RUNS)}
    print(json.dumps(values, indent=1))
    sys.exit(0)
