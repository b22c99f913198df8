"""Looking inside a trained ViT: attention maps and rollout (:mod:`~vitlab.analysis.attention`), faithfulness of
saliency maps, the paper's Figure 7, and representation comparisons (CKA, linear probes, soft nearest-neighbour
loss). Every function is pure (tensors in, numbers or tensors out) and tested on a case whose answer is known;
the figures are drawn by :mod:`vitlab.plots`."""

from vitlab.analysis.attention import (
    AttentionFigure,
    AttentionMaps,
    attention_figure,
    attention_maps,
    last_layer_attention,
    rollout,
    upsample_map,
)
from vitlab.analysis.faithfulness import Faithfulness, auc, deletion_insertion_curves, faithfulness, pointing_game
from vitlab.analysis.figure7 import (
    attention_distances,
    mean_attention_distance,
    model_position_similarity,
    patch_distances,
    patch_embedding_components,
    position_similarity,
    uniform_attention_distance,
)
from vitlab.analysis.representations import (
    MinibatchCKA,
    block_representations,
    cka,
    hsic_unbiased,
    linear_probe_accuracy,
    probe_blocks,
    residual_ablation,
    soft_nearest_neighbor_loss,
)

__all__ = [
    "AttentionFigure", "AttentionMaps", "Faithfulness", "MinibatchCKA", "attention_distances", "attention_figure",
    "attention_maps", "auc", "block_representations", "cka", "deletion_insertion_curves", "faithfulness",
    "hsic_unbiased", "last_layer_attention", "linear_probe_accuracy", "mean_attention_distance",
    "model_position_similarity", "patch_distances", "patch_embedding_components", "pointing_game",
    "position_similarity", "probe_blocks", "residual_ablation", "rollout", "soft_nearest_neighbor_loss",
    "uniform_attention_distance", "upsample_map",
]
