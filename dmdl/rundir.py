"""The files of a run directory, named once (no torch import: the ``dmdl`` command reads them).

``dmdl train`` writes into ``output_dir``:

- :data:`CHECKPOINT_NAME` (``checkpoint.pth``): model, optimiser, scheduler, AMP scaler, RNG
  states and the method's state, after every epoch (atomically);
- :data:`CONFIG_NAME` (``config.json``): the run's flat config keys (what ``--resume`` reads);
- :data:`LOG_NAME` (``log.csv``): one row per epoch; :data:`TENSORBOARD_DIR`: the same as
  TensorBoard scalars;
- :data:`RESULTS_NAME` (``results.json``): metrics in percent, with the config;
- :data:`TEST_SELECTED_NAME`: the epoch with the best test mAP, with ``select_on_test``;
- a trial list (``--trial 1,2,3``) writes :data:`TRIALS_NAME` and :data:`TRIALS_RESULTS_NAME`
  at the top and one run directory per trial (:func:`trial_dir`);
- a seed list (``--seeds 1,2,3``) writes :data:`SEEDS_NAME` and :data:`SEEDS_RESULTS_NAME` at the
  top and one run directory per seed (:func:`seed_dir`), each holding a run or a trial list.

``dmdl evaluate`` writes :func:`evaluation_name` beside the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_NAME = "checkpoint.pth"
CONFIG_NAME = "config.json"
LOG_NAME = "log.csv"
TENSORBOARD_DIR = "tensorboard"
RESULTS_NAME = "results.json"
TEST_SELECTED_NAME = "test_selected.pth"
TRIALS_NAME = "trials.json"  # the trial list of a `--trial all` / `--trial 1,2,3` run directory
TRIALS_RESULTS_NAME = "results_trials.json"
SEEDS_NAME = "seeds.json"  # the seed list of a `--seeds 1,2,3` run directory
SEEDS_RESULTS_NAME = "results_seeds.json"


def trial_dir(root, trial: int) -> Path:
    """The run directory of RegDB trial ``trial`` under a trial-list run ``root``."""
    return Path(root) / f"trial{trial}"


def seed_dir(root, seed: int) -> Path:
    """The run directory of seed ``seed`` under a seed-list run ``root``."""
    return Path(root) / f"seed{seed}"


def evaluation_name(dataset: str, trial: int) -> str:
    """The file ``dmdl evaluate`` writes beside the checkpoint: ``evaluation_<dataset>_trial<T>.json``."""
    return f"evaluation_{dataset}_trial{trial}.json"


__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "LOG_NAME", "TENSORBOARD_DIR", "RESULTS_NAME", "TEST_SELECTED_NAME",
           "TRIALS_NAME", "TRIALS_RESULTS_NAME", "SEEDS_NAME", "SEEDS_RESULTS_NAME", "trial_dir", "seed_dir",
           "evaluation_name"]
