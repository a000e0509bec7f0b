"""``labels: ground-truth``: the true identities in place of the pseudo-labels (the supervised ceiling)."""

import csv
import json
import warnings

import numpy as np
import pytest

from dmdl.pseudo_labels import ground_truth_labels, ground_truth_unified


def test_labels_are_the_ids_renumbered_in_ascending_order():
    np.testing.assert_array_equal(ground_truth_labels([7, 3, 7, 11]), [1, 0, 1, 2])
    np.testing.assert_array_equal(ground_truth_labels([7, 3], space=[11, 3, 7, 5]), [2, 0])  # ids 3 5 7 11
    unified, k = ground_truth_unified({"visible": [4, 9, 9], "infrared": [9, 2]})
    assert k == 3 and unified["visible"].tolist() == [1, 2, 2] and unified["infrared"].tolist() == [2, 0]
    with pytest.raises(ValueError, match=r"person ids \[8\]"):
        ground_truth_labels([8, 3], space=[3, 4])


@pytest.mark.parametrize("preset", ["regdb-cpu", "regdb-cpu-mult"])
def test_both_methods_train_on_the_true_identities_and_say_so(preset, toy_regdb, tmp_path, capsys):
    from dmdl.cli import main

    out = tmp_path / preset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["train", "--config", preset, "--data-root", str(toy_regdb), "--output-dir", str(out),
                   "--labels", "ground-truth", "--height", "64", "--width", "32", "--iters", "2", "--batch-size", "16",
                   "--num-instances", "4", "--workers", "0", "--stage1-epochs", "1", "--stage2-epochs", "2",
                   "--eval-untrained", "false"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "log.csv", newline="")))
    n_ids = 6  # the toy's training identities (trial 1), in both modalities
    for r in rows:
        assert (r["clusters_visible"], r["clusters_infrared"]) == (str(n_ids), str(n_ids))
        assert r["outliers_visible"] == r["outliers_infrared"] == "0"
        assert float(r["ari_visible"]) == float(r["ari_infrared"]) == 1.0
    for r in rows[1:]:
        assert r["matching"].startswith("ground-truth->") and float(r["ari_unified"]) == 1.0
        assert int(r["unified_ids"]) == n_ids
    results = json.loads((out / "results.json").read_text())["results"]
    assert "supervised" in results["supervision"]
    printed = capsys.readouterr().out
    assert "supervised Visible->Thermal" in printed and "not an unsupervised result" in printed
