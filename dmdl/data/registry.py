"""The dataset registry: one entry per dataset, read by every place that needs a dataset's policy.

An entry (:class:`DatasetInfo`) says how to read the dataset (its reader class), whether it has
trials (RegDB's ten train/test splits), how it is tested (the settings, i.e. the query ->
gallery directions or search modes, the number of random gallery draws per setting, the
query/gallery builder and the metric function), and which setting's mAP selects a model when
``select_on_test`` is on. The config, the command line, the dataset checks, the evaluation and
the engine read it; none keeps its own list of dataset names.

Entries name their functions by import path (``"module:attribute"``, loaded by
:meth:`DatasetInfo.load`), so this module imports neither torch nor :mod:`dmdl.evaluation`.
The protocols themselves are described in docs/docs/datasets.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class DatasetInfo:
    """What dmdl knows about one dataset.

    Attributes:
        name: the config name (``--dataset``).
        title: the dataset's own name, for messages (``"SYSU-MM01"``).
        reader: import path of the reader class, called as ``reader(root, trial=, problems=)`` when
            ``trials`` else ``reader(root, problems=)``.
        trials: number of train/test splits a run picks from with ``--trial`` (RegDB: 10); 0: one split.
        settings: the test settings in report order (``v2t``/``t2v``; ``all``/``indoor``; ...).
        setting_titles: each setting's name in tables.
        gallery_draws: random gallery draws averaged per setting (SYSU, LLCM: 10); 0: one fixed gallery.
        query_gallery: import path of the builder: ``f(dataset, setting)`` when ``gallery_draws`` is 0,
            else ``f(dataset, setting, draw)``; returns (query records, gallery records).
        metric: import path of the metric: ``f(dist, q_pids, g_pids)`` when ``cameras`` is False, else
            ``f(dist, q_pids, g_pids, q_camids, g_camids)``; returns (CMC, mAP, mINP).
        cameras: the metric excludes gallery images by camera (SYSU, LLCM).
        selection_key: the setting whose test mAP ``select_on_test`` maximises.
        infrared_word: how the dataset names its infrared modality in messages.
    """

    name: str
    title: str
    reader: str
    trials: int
    settings: tuple[str, ...]
    setting_titles: Mapping[str, str]
    gallery_draws: int
    query_gallery: str
    metric: str
    cameras: bool
    selection_key: str
    infrared_word: str = "infrared"

    def load(self, what: str) -> Any:
        """The object behind one of the import-path attributes (``"reader"``, ``"query_gallery"``,
        ``"metric"``)."""
        module, attr = getattr(self, what).split(":")
        return getattr(importlib.import_module(module), attr)

    def open(self, root, trial: int = 1, problems: list | None = None):
        """The reader on ``root`` (``trial`` only for datasets with trials; ``problems``: collect them
        instead of raising, see :func:`dmdl.data.records.report`).

        Raises:
            ValueError: no ``root``; FileNotFoundError / ValueError from the reader (strict mode).
        """
        if not root:
            raise ValueError("data_root is not set: pass --data-root DIR")
        reader = self.load("reader")
        if self.trials:
            return reader(root, trial=trial, problems=problems)
        return reader(root, problems=problems)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="sysu", title="SYSU-MM01", reader="dmdl.data.sysu:SYSUMM01", trials=0,
            settings=("all", "indoor"), setting_titles={"all": "All-search", "indoor": "Indoor-search"},
            gallery_draws=10, query_gallery="dmdl.evaluation.protocols:sysu_query_gallery",
            metric="dmdl.evaluation.metrics:eval_sysu", cameras=True, selection_key="all"),
        DatasetInfo(
            name="regdb", title="RegDB", reader="dmdl.data.regdb:RegDB", trials=10,
            settings=("v2t", "t2v"), setting_titles={"v2t": "Visible->Thermal", "t2v": "Thermal->Visible"},
            gallery_draws=0, query_gallery="dmdl.evaluation.protocols:regdb_query_gallery",
            metric="dmdl.evaluation.metrics:eval_regdb", cameras=False, selection_key="v2t",
            infrared_word="thermal"),
        DatasetInfo(
            name="llcm", title="LLCM", reader="dmdl.data.llcm:LLCM", trials=0,
            settings=("ir2vis", "vis2ir"), setting_titles={"ir2vis": "IR->VIS", "vis2ir": "VIS->IR"},
            gallery_draws=10, query_gallery="dmdl.evaluation.protocols:llcm_query_gallery",
            metric="dmdl.evaluation.metrics:eval_llcm", cameras=True, selection_key="vis2ir"),
    )
}
#: the config names, in the order the command line lists them
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry of ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}") from None


def open_dataset(name: str, root, trial: int = 1, problems: list | None = None):
    """The reader of dataset ``name`` on ``root`` (see :meth:`DatasetInfo.open`).

    Raises:
        ValueError: unknown name or no root; reader errors in strict mode.
    """
    return get_dataset(name).open(root, trial, problems)


__all__ = ["DatasetInfo", "DATASETS", "DATASET_NAMES", "get_dataset", "open_dataset"]
