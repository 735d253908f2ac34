"""vitlab: the Vision Transformer (Dosovitskiy et al., ICLR 2021), whole.

    import vitlab
    model = vitlab.create_model("ViT-B/16", num_classes=10)
    model = vitlab.load_pretrained("ViT-B_16.npz", num_classes=10, image_size=384)
    vitlab.save_pretrained(model, "runs/my-model")
"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

from .checkpoints import load_pretrained, save_pretrained
from .models import (ViTConfig, VisionTransformer, count_flops, count_parameters, create_model, list_models,
                     model_config)


def __getattr__(name):
    # `vitlab.inspection` (the paper's figures) pulls in matplotlib, so it is imported on first use only
    if name == "inspection":
        import importlib
        return importlib.import_module(f"vitlab.{name}")
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")

__all__ = ["ViTConfig", "VisionTransformer", "count_flops", "count_parameters", "create_model", "list_models",
           "load_pretrained", "model_config", "save_pretrained"]
