"""The model families the data and compute studies compare, at the sizes that fit 28 x 28 grey images.

Each entry is (registry name, overrides). "ViT" is the studies' small pure ViT; "BiT" a BiT ResNet v2 (the
paper's CNN baseline) narrowed to a comparable number of parameters; "ViT+SPT+LSA" the same ViT with the
small-data fixes of Lee, Lee & Song (2021), "ViT+SPT" and "ViT+LSA" with one of them each; "Hybrid" a
one-stage ResNet stem (stride 4) feeding 1 x 1 patches of its feature map to a transformer of the ViT's width, so all three see 7 x 7 = 49
positions.
"""

from __future__ import annotations

from .core import SMALL_VIT, TINY_VIT

_BODY = {k: v for k, v in SMALL_VIT.items() if k != "patch_size"}


def hybrid(**transformer) -> tuple[str, dict]:
    return "R50+ViT-B/16", dict(_BODY, patch_size=1, resnet_layers=[1], **transformer)


def bit(layers: list[int]) -> tuple[str, dict]:
    return "BiT-R50x1", dict(layers=layers, width_factor=0.5)


# The small-data ViT of Lee, Lee & Song (2021): shifted patch tokens and locality self-attention.
SMALL_DATA = dict(patch_embed="spt", attention="lsa")

# Comparable size, 0.15-0.25M parameters each (results.csv states each one's count).
COMPARABLE = {"ViT": ("ViT-Ti/16", dict(SMALL_VIT)), "BiT": bit([2, 2]), "Hybrid": hybrid(depth=3),
              "ViT+SPT+LSA": ("ViT-Ti/16", dict(SMALL_VIT, **SMALL_DATA)),
              "ViT+SPT": ("ViT-Ti/16", dict(SMALL_VIT, patch_embed="spt")),
              "ViT+LSA": ("ViT-Ti/16", dict(SMALL_VIT, attention="lsa"))}

TINY = {
    "ViT": ("ViT-Ti/16", dict(TINY_VIT)),
    "BiT": bit([1, 1]),
    "Hybrid": ("R50+ViT-B/16", dict({k: v for k, v in TINY_VIT.items() if k != "patch_size"}, patch_size=1,
                                    resnet_layers=[1])),
    "ViT+SPT+LSA": ("ViT-Ti/16", dict(TINY_VIT, **SMALL_DATA)),
}

# Three sizes per family for the compute study, small to large (about 0.2M, 0.7M and 1.2M parameters).
SCALED = {
    "ViT": [("ViT-Ti/16", dict(SMALL_VIT)),
            ("ViT-Ti/16", dict(SMALL_VIT, width=96, depth=6, mlp_dim=384, num_heads=3)),
            ("ViT-Ti/16", dict(SMALL_VIT, width=128, depth=6, mlp_dim=512, num_heads=4))],
    "BiT": [bit([2, 2]), bit([1, 1, 1]), bit([2, 2, 2])],
    "Hybrid": [hybrid(depth=3), hybrid(width=96, depth=6, mlp_dim=384, num_heads=3),
               hybrid(width=128, depth=6, mlp_dim=512, num_heads=4)],
}

# The paper's Figure 3/4/5 models (upstream pre-training at 224 px).
PAPER = {
    "ViT": ["ViT-B/32", "ViT-B/16", "ViT-L/32", "ViT-L/16", "ViT-H/14"],
    "BiT": ["BiT-R50x1", "BiT-R101x1", "BiT-R152x2"],
    "Hybrid": ["R50+ViT-B/16", "R50+ViT-B/32", "R50+ViT-L/16", "R50+ViT-L/32"],
}
