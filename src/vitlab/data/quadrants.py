"""A synthetic task where only position decides the label: which quadrant of a 56 x 56 canvas holds the item.

Each Fashion-MNIST image is pasted, whole, into one of the four 28 x 28 quadrants of a black canvas; the label is
the quadrant (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), drawn at random per image with a fixed
seed. The garment says nothing about the label, so a model that cannot tell where a patch is (no position
embedding: attention and pooling are permutation-equivariant) stays at chance, 25%; the `posemb` study uses it.
"""
import torch

from . import fashion_mnist
from .arrays import ArrayDataset

CLASS_NAMES = ["top-left", "top-right", "bottom-left", "bottom-right"]
SEEDS = {"train": 1234, "test": 5678}


def load(split: str, root=None, *, in_chans=3, allow_download=True) -> ArrayDataset:
    items = fashion_mnist.load(split, root, in_chans=1, allow_download=allow_download)
    generator = torch.Generator().manual_seed(SEEDS[split])
    labels = torch.randint(0, 4, (len(items),), generator=generator)
    canvas = torch.zeros(len(items), 1, 56, 56, dtype=torch.uint8)
    for quadrant in range(4):
        chosen = labels == quadrant
        top, left = 28 * (quadrant // 2), 28 * (quadrant % 2)
        canvas[chosen, :, top:top + 28, left:left + 28] = items.images[chosen]
    return ArrayDataset(canvas, labels, CLASS_NAMES, in_chans=in_chans, name="quadrants")
