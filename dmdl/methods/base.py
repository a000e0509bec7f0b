"""The method contract: what a training method writes, and what it is given.

The engine (:class:`dmdl.engine.Engine`) owns the run: stages, epochs, the optimizer and LR
schedule of each stage, checkpoints, logs, evaluation. A method owns what happens inside one
epoch: pseudo-labels, memories, the training steps. The engine's caller chooses the method class
(``dmdl.methods.get_method(cfg)``) and hands it to the engine, which constructs it once per run
as ``method_class(ctx, cfg)``:

- ``ctx`` (:class:`dmdl.training.RunContext`): the model, the device, AMP and the gradient
  scaler, the optimizer of the current stage, the training images, DataLoader workers and the
  image cache, ``ctx.features(modality, renormalize, flip)`` and ``ctx.label_quality(...)``;
- ``cfg`` (:class:`dmdl.config.Config`): the shared sections and the method's own
  (``cfg.method``, a :class:`dmdl.config.MethodConfig` registered with
  :func:`dmdl.config.register_method_config`).

The shared pieces of an epoch are in :mod:`dmdl.training.steps` (``cluster_modalities``,
``forward_views``, ``optimizer_step``, ``run_steps``, ``epoch_seed``). A new method is two files:
a config section and a class with the three methods of :class:`Method`; registering the section
(importing its module before the config is read) makes ``--method NAME`` train it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Method(Protocol):
    """A training method (see the module docstring)."""

    def epoch(self, stage: int, epoch: int) -> dict:
        """Train one epoch of ``stage`` (1 or 2; ``epoch`` counts from 0 in each stage) with
        ``ctx.optimizer``; returns the epoch's log fields (:data:`dmdl.training.log.LOG_FIELDS`:
        cluster counts, pseudo-label ARI, mean losses, seconds per phase; others are ignored).

        Raises:
            FloatingPointError: a non-finite loss (the engine names the last good checkpoint).
            TrainingError: a clustering that leaves nothing to train on.
        """

    def state_dict(self) -> dict:
        """What the last epoch trained on (pseudo-labels, memories, ...), saved in the checkpoint
        beside the model; an empty dict before the first epoch."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` saved, when a run resumes from a checkpoint."""


__all__ = ["Method"]
