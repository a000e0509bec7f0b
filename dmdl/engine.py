"""The training engine: the run loop around a method.

The engine owns the run (docs/dmdl.md#A1): evaluation of the initial model, stage 1, stage 2,
evaluation of the trained model; the optimizer and LR schedule of each stage (docs/dmdl.md#A10); a checkpoint
after every epoch and exact resume (:mod:`dmdl.training.checkpoint`); the epoch log
(:mod:`dmdl.training.log`). A *method* (:mod:`dmdl.methods.base`) owns what happens inside an
epoch; it gets the run's services as a :class:`dmdl.training.RunContext` and the config, and
nothing else of the engine. ``Engine(cfg, method_class).run()`` trains one model;
:func:`dmdl.trials.train_trials` trains one per RegDB trial.

Data flow of one epoch: images -> features -> Jaccard -> DBSCAN -> association -> memories ->
losses -> step (the method's, on :mod:`dmdl.training.steps`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from dmdl.config import Config, parse_milestones
from dmdl.data.check import preflight
from dmdl.data.registry import get_dataset
from dmdl.errors import CheckpointError, TrainingError
from dmdl.evaluation.runner import evaluate_model, format_table
from dmdl.guards import non_finite_loss_message
from dmdl.rundir import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, RESULTS_NAME, TEST_SELECTED_NAME
from dmdl.training.checkpoint import (RESUME_KEYS, atomic_save, load_checkpoint, next_epoch, resolve_resume,
                                      rng_state, set_rng_state, truncate_log)
from dmdl.training.context import build_context, seed_everything, set_deterministic, training_records
from dmdl.training.distributed import distributed_banner, join_run, restarted_run, state_digest
from dmdl.training.log import LOG_FIELDS, EpochLog, fmt_seconds, write_results
from dmdl.visualization.curves import plot_training_curves

# config keys that may differ between a checkpoint and the resumed run without changing the result
RESUME_FREE = ("resume", "output_dir", "data_root", "device", "cache_images", "eval_untrained", "check_images",
               "max_outlier_share")


class Engine:
    """Runs a :class:`Config` end to end with one method (see the module docstring); a checkpoint
    after every epoch, resumable with ``run.resume``.

    Args:
        cfg: the run's configuration.
        method: the method class (``dmdl.methods.get_method(cfg)``), constructed here as
            ``method(ctx, cfg)``.
        dataset: the reader of ``cfg``'s dataset, already checked (default: read and checked here
            with :func:`dmdl.data.check.preflight`).
        announce: print the output directory (the CLI prints it itself, earlier).

    Raises:
        ValueError / FileNotFoundError: bad config, dataset or checkpoint (messages name it).
    """

    def __init__(self, cfg: Config, method: type, dataset=None, announce: bool = True):
        self.cfg = cfg.validate()
        if cfg.run.deterministic:
            set_deterministic()
        self.dist, device = join_run(cfg.run.dist_backend, cfg.run.dist_timeout, cfg.run.device)
        self.out = Path(cfg.run.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if announce:
            print(f"output directory: {self.out.resolve()}", flush=True)
        resume = resolve_resume(cfg.run.resume or restarted_run(self.out))
        if cfg.run.resume and resume is None:
            print(f"--resume: {cfg.run.resume} holds no checkpoint yet (stopped before the first epoch ended): "
                  "starting from the beginning", flush=True)
        seed_everything(cfg.run.seed)
        data = cfg.data
        if dataset is None:
            dataset = preflight(data.dataset, data.data_root, data.trial, images=data.check_images,
                                max_train_images=data.max_train_images, log=print)
        self.dataset = dataset
        self.ctx = build_context(cfg, training_records(dataset, data.max_train_images, data.data_root), self.dist,
                                 device)
        if self.dist.enabled:
            print(distributed_banner(self.dist, cfg, self.ctx), flush=True)
        self.results: dict[str, dict] = {}
        self.start = (1, 0)  # (stage, epoch) to run next
        self.scheduler = None
        self._optim_state = None
        self.last_checkpoint: tuple[Path, int, int] | None = None  # (file, stage, epoch) of the last good one
        self.method = method(self.ctx, cfg)  # a dmdl.methods.base.Method
        if resume is not None:
            self._resume(resume)
        if self.dist.is_main:
            (self.out / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2))

    # ------------------------------------------------------------------ checkpoints
    def _resume(self, path: Path) -> None:
        """Load a checkpoint of this run: model, scheduler position, scaler, RNG states, method."""
        cfg = self.cfg
        ckpt = load_checkpoint(path, map_location=self.ctx.device, need=RESUME_KEYS)
        old, now = ckpt["config"], cfg.to_dict()
        for key in ("dataset", "trial", "arch"):
            if old.get(key) != now[key]:
                raise CheckpointError(f"--resume: {path} was trained with {key} {old.get(key)!r}, this run has "
                                      f"{now[key]!r}")
        changed = [f"{k} {old[k]!r} -> {v!r}" for k, v in now.items() if k in old and old[k] != v
                   and k not in RESUME_FREE]
        if changed:
            print(f"warning: resuming with settings that differ from {path}'s: {'; '.join(changed)}: the result "
                  "will differ from an uninterrupted run", file=sys.stderr, flush=True)
        try:
            self.ctx.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"--resume: {path} does not fit the model of this config "
                                  f"({str(exc).splitlines()[0]})") from None
        self.results = ckpt.get("results", {})
        stage, epoch = ckpt["stage"], ckpt["epoch"]
        self.start = next_epoch(stage, epoch, cfg.schedule.epochs(stage))
        if self.start[0] == stage:
            self._optim_state = (ckpt["optimizer"], ckpt["scheduler"], float(old.get("lr", cfg.schedule.lr)))
        if ckpt.get("scaler") and self.ctx.scaler.is_enabled():  # the scaler lives across stages
            self.ctx.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        if ckpt.get("workers") not in (None, self.ctx.workers):
            print(f"warning: the checkpoint ran with {ckpt['workers']} DataLoader workers, this run has "
                  f"{self.ctx.workers}: the augmentations (and the result) will differ from an uninterrupted run",
                  file=sys.stderr, flush=True)
        self.method.load_state_dict(ckpt)
        truncate_log(self.out / LOG_NAME, stage, epoch, LOG_FIELDS)
        self.last_checkpoint = (Path(path), stage, epoch)
        nxt = f"next stage {self.start[0]} epoch {self.start[1]}" if self.start[0] <= 2 else \
            "every epoch is done (the final evaluation runs again)"
        print(f"resumed from {path}: stage {stage} epoch {epoch} done; {nxt}", flush=True)

    def _save_checkpoint(self, stage: int, epoch: int) -> None:
        """Everything a resumed run needs to continue exactly (model, optimizer, scheduler, AMP
        scaler, RNG states), plus what the epoch trained on (the method's state). Atomic."""
        state = {"format": 2, "model": self.ctx.model.state_dict(), "optimizer": self.ctx.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.ctx.scaler.state_dict(), "stage": stage,
                 "epoch": epoch, "config": self.cfg.to_dict(), "results": self.results, "workers": self.ctx.workers,
                 "rng": rng_state()}
        state.update(self.method.state_dict())
        if self.dist.enabled and not self.dist.all_equal(state_digest(state.get("memories"))):
            raise TrainingError(f"stage {stage} epoch {epoch}: the memories differ between the ranks; the run "
                                f"is no longer the one-process run")
        if self.dist.is_main:
            atomic_save(state, self.out / CHECKPOINT_NAME)
        self.last_checkpoint = (self.out / CHECKPOINT_NAME, stage, epoch)

    # ------------------------------------------------------------------ the run
    def _make_optimizer(self, stage: int = 1) -> None:
        """Adam, fresh for each stage (docs/dmdl.md#A1, #A10), with StepLR(step_size, gamma) per stage, or with
        ``lr_milestones`` the LR multiplied by gamma at each milestone epoch counted over both
        stages (MULT docs/mult.md#B5: 20, 60, 80 of 90)."""
        sch = self.cfg.schedule
        params = [p for p in self.ctx.model.parameters() if p.requires_grad]
        optimizer = self.ctx.optimizer = torch.optim.Adam(params, lr=sch.lr, weight_decay=sch.weight_decay)
        milestones = parse_milestones(sch.lr_milestones)
        if milestones:
            offset, gamma = (0 if stage == 1 else sch.stage1_epochs), sch.gamma
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda e: gamma ** sum(m <= offset + e for m in milestones))
        else:
            self.scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=sch.step_size, gamma=sch.gamma)
        if self._optim_state is not None:  # resuming inside this stage
            optimizer.load_state_dict(self._optim_state[0])
            self.scheduler.load_state_dict(self._optim_state[1])
            scale = sch.lr / self._optim_state[2]
            if scale != 1.0:  # --resume RUN_DIR --lr X: the new base rate, at the schedule's current step
                for group in optimizer.param_groups:
                    group["lr"] *= scale
                    group["initial_lr"] = sch.lr
                self.scheduler.base_lrs = [sch.lr] * len(optimizer.param_groups)
                self.scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
            self._optim_state = None

    def evaluate(self) -> dict:
        """The dataset's test protocol on the current model (see :func:`evaluate_model`)."""
        data = self.cfg.data
        return evaluate_model(self.ctx.model, data.dataset, self.dataset, data.height, data.width, self.ctx.device,
                              workers=self.ctx.workers, batch_size=max(data.batch_size, 32),
                              interpolation=self.ctx.interpolation, extract=self.ctx.extract)

    def _select_on_test(self, stage: int, epoch: int, stats: dict) -> None:
        """The reference's model selection (docs/dmdl.md#A1.2.9): evaluate on the TEST set after every
        epoch and keep the best by test mAP (the registry's selection setting) in
        ``test_selected.pth``. Reported as ``test_selected``, never as ``trained``."""
        key = get_dataset(self.cfg.data.dataset).selection_key
        res = self.evaluate()
        stats["test_mAP"] = res[key]["mAP"]
        best = self.results.get("test_selected")
        if best is None or res[key]["mAP"] > best[key]["mAP"]:
            self.results["test_selected"] = dict(res, stage=stage, epoch=epoch,
                                                 note="selected on the test set (reference protocol): optimistic")
            if self.dist.is_main:
                atomic_save({"model": self.ctx.model.state_dict(), "config": self.cfg.to_dict(), "stage": stage,
                             "epoch": epoch, "results": self.results}, self.out / TEST_SELECTED_NAME)

    def _epoch(self, stage: int, epoch: int, log: EpochLog) -> None:
        """One epoch of the method, then the LR step, the log row and the checkpoint."""
        t0 = time.time()
        stats = {"stage": stage, "epoch": epoch, "lr": self.ctx.optimizer.param_groups[0]["lr"]}
        try:
            stats.update(self.method.epoch(stage, epoch))
        except FloatingPointError as exc:
            last = self.last_checkpoint
            where = None if last is None else f"{last[0]} (stage {last[1]} epoch {last[2]})"
            raise TrainingError(non_finite_loss_message(str(exc), where, str(self.out),
                                                        self.cfg.schedule.lr)) from None
        self.scheduler.step()
        stats["seconds"] = round(time.time() - t0, 1)
        if self.cfg.run.select_on_test:
            self._select_on_test(stage, epoch, stats)
        log.write(stats)
        self._save_checkpoint(stage, epoch)

    def run(self) -> dict:
        """Train both stages and evaluate; returns ``{"untrained": ..., "trained": ...}``
        (``untrained`` is the initial model: ImageNet weights unless ``pretrained: none``)."""
        sch, t_start = self.cfg.schedule, time.time()
        if self.cfg.run.eval_untrained and "untrained" not in self.results:
            print("evaluating the initial (untrained) model ...", flush=True)
            self.results["untrained"] = self.evaluate()
            print(format_table({"untrained": self.results["untrained"]}), flush=True)
        log = EpochLog(self.out, sch.stage1_epochs, write=self.dist.is_main)
        total = sch.stage1_epochs + sch.stage2_epochs
        done_before = (0 if self.start[0] == 1 else sch.stage1_epochs) + self.start[1] if self.start[0] <= 2 else total
        t_train, done = time.time(), 0
        for stage in (1, 2):
            epochs = sch.epochs(stage)
            if stage < self.start[0] or epochs == 0:
                continue
            self._make_optimizer(stage)
            for epoch in range(self.start[1] if stage == self.start[0] else 0, epochs):
                self._epoch(stage, epoch, log)
                done += 1
                eta = (time.time() - t_train) / done * (total - done_before - done)
                print(f"progress: {done_before + done}/{total} epochs done (stage {stage}: {epoch + 1}/{epochs}), "
                      f"elapsed {fmt_seconds(time.time() - t_start)}, ETA {fmt_seconds(eta)} + the final evaluation; "
                      f"checkpoint {self.out / CHECKPOINT_NAME}", flush=True)
        log.close()
        return self._finish(t_start)

    def _finish(self, t_start: float) -> dict:
        """Evaluate the trained model, add the results to the last checkpoint, print and write them."""
        print("evaluating the trained model ...", flush=True)
        self.results["trained"] = self.evaluate()
        self.results["train_seconds"] = round(time.time() - t_start, 1)
        if self.ctx.optimizer is not None and self.dist.is_main:
            # add the results to the last checkpoint, keeping its end-of-epoch RNG states (evaluation
            # draws from torch's RNG: DataLoader seeds), so that resuming from it stays exact
            ckpt = torch.load(self.out / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
            ckpt["results"] = self.results
            atomic_save(ckpt, self.out / CHECKPOINT_NAME)
        report = {k: v for k, v in self.results.items() if k in ("untrained", "trained")}
        if self.cfg.clustering.labels == "ground-truth":  # labelled as what it is, everywhere
            self.results["supervision"] = "ground-truth labels: supervised, not an unsupervised result"
            report["supervised"] = report.pop("trained")
            print("supervised = trained with the true identities (labels: ground-truth): the ceiling of this "
                  "pipeline and schedule, not an unsupervised result")
        if "test_selected" in self.results:
            sel = self.results["test_selected"]
            report["test-sel."] = {k: v for k, v in sel.items() if isinstance(v, dict)}
            print(f"test-sel. = the epoch with the best TEST mAP (stage {sel['stage']} epoch {sel['epoch']}), "
                  "the reference's selection: optimistic, not a held-out result")
        print(format_table(report))
        if not self.dist.is_main:
            return self.results
        if (self.out / LOG_NAME).is_file():  # the training curves of log.csv (none if no epoch ran here)
            self.results["pictures"] = [p.name for p in plot_training_curves(self.out)]
        write_results(self.out / RESULTS_NAME, self.results, self.cfg.to_dict())
        print(f"results: {self.out / RESULTS_NAME}; checkpoint: {self.out / CHECKPOINT_NAME}"
              + "".join(f"; {name}" for name in self.results.get("pictures", [])), flush=True)
        print(f"output directory: {self.out.resolve()} ({fmt_seconds(time.time() - t_start)})", flush=True)
        return self.results


__all__ = ["Engine", "RESUME_FREE"]
