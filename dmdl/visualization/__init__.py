"""Pictures a re-ID user expects, as PNG files (matplotlib with the Agg canvas, and PIL).

- :mod:`dmdl.visualization.curves`: CMC curves, training curves from ``log.csv``
  (:func:`plot_training_curves`), ``dmdl plot`` (:func:`redraw_run`).
- :mod:`dmdl.visualization.ranklist`: rank-list rows and sheets, ``index.html``.
- :mod:`dmdl.visualization.tsne`: t-SNE of features by modality and identity.
"""

from .curves import plot_cmc, plot_training_curves, redraw_run

__all__ = ["plot_cmc", "plot_training_curves", "redraw_run"]
