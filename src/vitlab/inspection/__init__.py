"""Inspecting a trained ViT: the paper's Section 4.5 and Appendix D (Figures 6, 7 and 14).

    from vitlab.inspection import attention_weights, attention_rollout, mean_attention_distance
    logits, attentions = attention_weights(model, x)           # per layer (B, heads, T, T)
    maps = attention_rollout(attentions, model.num_prefix_tokens, model.config.grid_size,
                             model.config.has_class_token)

`inspect_model` writes every figure into a directory; `vitlab inspect` is its command line.
"""

from .attention import attention_weights
from .distance import attention_distance, mean_attention_distance, patch_distances, uniform_attention_distance
from .filters import embedding_filters, principal_filters
from .images import dataset_batches, load_image_files, normalise, resize
from .posemb import position_similarity, posemb_similarity
from .report import FIGURES, inspect_model
from .rollout import attention_rollout, class_attention, rollout_matrix

__all__ = ["FIGURES", "attention_distance", "attention_rollout", "attention_weights", "class_attention",
           "dataset_batches", "embedding_filters", "inspect_model", "load_image_files", "mean_attention_distance",
           "normalise", "patch_distances", "position_similarity", "posemb_similarity", "principal_filters",
           "resize", "rollout_matrix", "uniform_attention_distance"]
