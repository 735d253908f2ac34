"""Models: the Vision Transformer, its hybrid, the BiT baselines, and the registry of named variants."""

from .complexity import count_flops, num_tokens
from .registry import (BiTConfig, MODELS, canonical_name, count_parameters, create_model, list_models,
                       model_config)
from .vit import VisionTransformer
from .vit_config import ViTConfig

__all__ = ["BiTConfig", "MODELS", "ViTConfig", "VisionTransformer", "canonical_name", "count_flops",
           "count_parameters", "create_model", "list_models", "model_config", "num_tokens"]
