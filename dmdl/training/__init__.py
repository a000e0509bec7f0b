"""The services a training method needs, and the run's bookkeeping, each in its own module:

- :mod:`dmdl.training.context`: :class:`RunContext` (model, device, AMP, optimizer, training
  images, features, label quality) and :func:`build_context`;
- :mod:`dmdl.training.steps`: the epoch seed, the clustering loop with its guard, the forward pass,
  the optimiser step, the step loop;
- :mod:`dmdl.training.checkpoint`: atomic save, checked load, resume, RNG states, log truncation;
- :mod:`dmdl.training.log`: the per-epoch CSV / TensorBoard record and the printed lines.
"""

from .context import RunContext, build_context

__all__ = ["RunContext", "build_context"]
