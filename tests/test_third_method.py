"""A third method plugs in as the README's Layout section says: a config section registered with
``register_method_config`` and a class with ``epoch``, ``state_dict`` and ``load_state_dict``,
built from the shared services (dmdl.training) only. ``dmdl train --method centroid`` then trains it
through the same engine, checkpoints, log and evaluation as DMDL and MULT."""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dmdl.config import METHOD_CONFIGS, Config, MethodConfig, register_method_config
from dmdl.data.loading import ImageListDataset
from dmdl.data import transforms
from dmdl.memories import CrossModalMemory
from dmdl.modalities import MODALITIES
from dmdl.training import RunContext
from dmdl.training.steps import cluster_modalities, forward_views, optimizer_step, run_steps


@dataclass
class CentroidConfig(MethodConfig):
    """The toy method's own keys."""

    name = "centroid"
    method_class = f"{__name__}:CentroidMethod"
    temperature: float = 0.1
    momentum: float = 0.5


class CentroidMethod:
    """Clusters each modality, trains on cluster memories with un-augmented images; nothing else."""

    def __init__(self, ctx: RunContext, cfg: Config):
        self.ctx, self.cfg = ctx, cfg
        self.labels: dict = {}

    def epoch(self, stage: int, epoch: int) -> dict:
        feats = {m: self.ctx.features(m, renormalize=True, flip=False) for m in MODALITIES}
        labels, _, stats = cluster_modalities(self.ctx, feats, self.cfg.clustering, f"stage {stage} epoch {epoch}")
        memory = CrossModalMemory.build(feats, labels, self.cfg.method.temperature, self.cfg.method.momentum)
        self.labels = labels
        data = self.cfg.data
        loaders = {}
        for m in MODALITIES:
            keep = np.flatnonzero(labels[m] >= 0)
            ds = ImageListDataset([self.ctx.train[m][i].path for i in keep], labels[m][keep].tolist(),
                                  transforms.test_transform(data.height, data.width))
            loaders[m] = DataLoader(ds, batch_size=data.batch_size, shuffle=True, drop_last=True)
        self.ctx.model.train()

        def step(batch):
            (xv, yv, _), (xi, yi, _) = batch
            out = forward_views(self.ctx, [xv, xi], torch.arange(len(xv) + len(xi)) >= len(xv))
            loss = memory.loss("visible", out[: len(xv)], yv) + memory.loss("infrared", out[len(xv):], yi)
            optimizer_step(self.ctx, loss, f"stage {stage} epoch {epoch}")
            memory.update("visible", out[: len(xv)].detach(), yv)
            memory.update("infrared", out[len(xv):].detach(), yi)
            return {"loss": float(loss.detach()), "loss_id": float(loss.detach())}

        n = min(self.cfg.schedule.iters_for(stage), *(len(v) for v in loaders.values()))
        batches = zip(*(loaders[m] for m in MODALITIES))
        stats.update(run_steps((b for _, b in zip(range(n), batches)), n, step, f"centroid {stage}.{epoch}"))
        return stats

    def state_dict(self) -> dict:
        return {"pseudo_labels": {m: v.copy() for m, v in self.labels.items()}}

    def load_state_dict(self, state: dict) -> None:
        pass


@pytest.fixture
def registered():
    register_method_config(CentroidConfig)
    yield
    METHOD_CONFIGS.pop("centroid")


def test_a_third_method_trains_through_the_command_line(registered, toy_regdb, tmp_path, capsys):
    from dmdl.cli import main

    preset = tmp_path / "centroid.yaml"  # shared sections only, plus the method's own key
    preset.write_text("method: centroid\ndataset: regdb\narch: mobilenet_v2\nnon_local: false\nheight: 64\n"
                      "width: 32\nbatch_size: 8\nnum_instances: 4\nworkers: 0\niters: 2\nstage1_epochs: 1\n"
                      "stage2_epochs: 1\nk1: 6\nk2: 2\neps: 0.5\neval_untrained: false\ntemperature: 0.2\n")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["train", "--config", str(preset), "--data-root", str(toy_regdb), "--output-dir", str(out)])
    assert rc == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "log.csv", newline="")))
    assert [(r["stage"], r["epoch"]) for r in rows] == [("1", "0"), ("2", "0")]
    assert all(float(r["loss"]) > 0 and int(r["clusters_visible"]) > 1 for r in rows)
    saved = json.loads((out / "config.json").read_text())
    assert saved["method"] == "centroid" and saved["temperature"] == 0.2 and "cai" not in saved
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    assert set(ckpt["pseudo_labels"]) == set(MODALITIES)
    assert set(json.loads((out / "results.json").read_text())["results"]["trained"]) == {"v2t", "t2v"}
    # a DMDL key is refused for this method, with the reason
    rc = main(["train", "--config", str(preset), "--data-root", str(toy_regdb), "--cai", "true"])
    assert rc == 2 and "is a key of method dmdl" in capsys.readouterr().err
