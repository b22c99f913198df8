"""Figures as functions of arrays: each takes plain data and a path, writes a PNG and returns the path.

One module per purpose:

- :mod:`~vitlab.plots.common`: the pyplot backend (Agg: no display needed), ``save_figure``, ``overlay``;
- :mod:`~vitlab.plots.training`: a training run's curves and an evaluation's confusion matrix;
- :mod:`~vitlab.plots.attention`: saliency maps over their images, and their deletion / insertion curves;
- :mod:`~vitlab.plots.analysis`: charts of measurements inside a model (Figure 7, CKA matrices, per-block
  series, the self-attention cost).
"""

from vitlab.plots.analysis import (
    plot_attention_cost,
    plot_attention_distance,
    plot_matrix,
    plot_patch_components,
    plot_per_block,
    plot_position_similarity,
)
from vitlab.plots.attention import (
    plot_attention_figure,
    plot_attention_overlays,
    plot_deletion_insertion,
    plot_saliency_grid,
)
from vitlab.plots.common import overlay, save_figure
from vitlab.plots.training import plot_confusion, plot_curves, read_metrics

__all__ = [
    "overlay", "plot_attention_cost", "plot_attention_distance", "plot_attention_figure", "plot_attention_overlays",
    "plot_confusion", "plot_curves", "plot_deletion_insertion", "plot_matrix", "plot_patch_components",
    "plot_per_block", "plot_position_similarity", "plot_saliency_grid", "read_metrics", "save_figure",
]
