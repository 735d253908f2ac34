"""big_vision's ViT .npz layout (github.com/google-research/big_vision), read by renaming it to the official one.

It is the same Flax model as the official code's, saved under `params/` with linen's numbering:

    official                                     big_vision
    .../MultiHeadDotProductAttention_1           .../MultiHeadDotProductAttention_0
    .../LayerNorm_2                              .../LayerNorm_1
    .../MlpBlock_3                               .../MlpBlock_0
    Transformer/posembed_input/pos_embedding     pos_embedding (older: Transformer/pos_embedding)

Two real differences: big_vision adds the position embeddings *before* prepending the [class] token, so its
table has no class row (equivalent to a zero row, see `add_class_slot`); and with `scan=True` the blocks are
stored once, as `Transformer/encoderblock/...` with depth as the leading axis.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from .mapping import add_class_slot, is_square

RENAMES = (("MultiHeadDotProductAttention_0", "MultiHeadDotProductAttention_1"),
           ("LayerNorm_1", "LayerNorm_2"),
           ("MlpBlock_0", "MlpBlock_3"))
SCANNED = "Transformer/encoderblock/"
POSEMB_KEYS = ("pos_embedding", "Transformer/pos_embedding")


def is_big_vision(arrays: dict) -> bool:
    """big_vision numbering: the blocks' attention is `MultiHeadDotProductAttention_0`."""
    return any(re.match(r"Transformer/encoderblock(_\d+)?/MultiHeadDotProductAttention_0/", k) for k in arrays)


def unscan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scanned blocks (depth, ...) -> encoderblock_{i}/... one per layer."""
    out = {}
    for key, value in arrays.items():
        if key.startswith(SCANNED):
            for i in range(value.shape[0]):
                out[f"Transformer/encoderblock_{i}/{key[len(SCANNED):]}"] = value[i]
        else:
            out[key] = value
    return out


def to_official_names(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in unscan(arrays).items():
        if key.startswith("Transformer/encoderblock_"):
            block, _, rest = key.partition("/")[2].partition("/")
            for old, new in RENAMES:
                if rest.startswith(old + "/"):
                    rest = new + rest[len(old):]
            key = f"Transformer/{block}/{rest}"
        elif key in POSEMB_KEYS:
            key = "Transformer/posembed_input/pos_embedding"
            # big_vision's own rule: a table of g*g + 1 rows is an old one that did have the class row
            if "cls" in arrays and not is_square(value.shape[1] - 1):
                value = add_class_slot(torch.from_numpy(np.asarray(value, np.float32))).numpy()
        out[key] = value
    return out
