"""The model families the data and compute studies compare, at the sizes that fit 28 x 28 grey images.

Each entry is (registry name, overrides). "ViT" is the main job's pure ViT; "BiT" a BiT ResNet v2 (the
paper's CNN baseline) narrowed to match it in parameters; "Hybrid" a one-stage ResNet stem (stride 4) feeding
1 x 1 patches of its feature map to the same transformer, so all three see 7 x 7 = 49 positions.
"""

from __future__ import annotations

from .core import MAIN_VIT, TINY_VIT

_VIT_BODY = {k: v for k, v in MAIN_VIT.items() if k != "patch_size"}

# Comparable size, about 1.2M parameters each (`python -m vitlab models` does not list these; the study's
# results.csv states each one's parameter count).
COMPARABLE = {
    "ViT": ("ViT-Ti/16", dict(MAIN_VIT)),
    "BiT": ("BiT-R50x1", dict(layers=[2, 2, 2], width_factor=0.5)),
    "Hybrid": ("R50+ViT-B/16", dict(_VIT_BODY, patch_size=1, resnet_layers=[1], depth=5)),
}

TINY = {
    "ViT": ("ViT-Ti/16", dict(TINY_VIT)),
    "BiT": ("BiT-R50x1", dict(layers=[1, 1], width_factor=0.5)),
    "Hybrid": ("R50+ViT-B/16", dict({k: v for k, v in TINY_VIT.items() if k != "patch_size"}, patch_size=1,
                                    resnet_layers=[1])),
}

# Three sizes per family for the compute study, small to large (roughly 0.3M, 1M and 2.5M parameters).
SCALED = {
    "ViT": [("ViT-Ti/16", dict(MAIN_VIT, width=64, depth=4, mlp_dim=256, num_heads=2)),
            ("ViT-Ti/16", dict(MAIN_VIT, width=96, depth=6, mlp_dim=384, num_heads=3)),
            ("ViT-Ti/16", dict(MAIN_VIT, width=160, depth=8, mlp_dim=640, num_heads=4))],
    "BiT": [("BiT-R50x1", dict(layers=[1, 1, 1], width_factor=0.5)),
            ("BiT-R50x1", dict(layers=[2, 2, 2], width_factor=0.5)),
            ("BiT-R50x1", dict(layers=[2, 2, 2, 1], width_factor=0.5))],
    "Hybrid": [("R50+ViT-B/16", dict(_VIT_BODY, patch_size=1, resnet_layers=[1], width=64, depth=4, mlp_dim=256,
                                     num_heads=2)),
               ("R50+ViT-B/16", dict(_VIT_BODY, patch_size=1, resnet_layers=[1], width=96, depth=6, mlp_dim=384,
                                     num_heads=3)),
               ("R50+ViT-B/16", dict(_VIT_BODY, patch_size=1, resnet_layers=[1], width=160, depth=8, mlp_dim=640,
                                     num_heads=4))],
}

# The paper's Figure 3/4/5 models (upstream pre-training at 224 px).
PAPER = {
    "ViT": ["ViT-B/32", "ViT-B/16", "ViT-L/32", "ViT-L/16", "ViT-H/14"],
    "BiT": ["BiT-R50x1", "BiT-R101x1", "BiT-R152x2"],
    "Hybrid": ["R50+ViT-B/16", "R50+ViT-B/32", "R50+ViT-L/16", "R50+ViT-L/32"],
}
