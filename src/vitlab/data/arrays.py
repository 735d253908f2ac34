"""In-memory data sets held as one uint8 N x C x H x W tensor (Fashion-MNIST, CIFAR)."""
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


def match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    """uint8 or float (..., C, H, W) with C in {1, 3} to in_chans channels (grey is repeated; RGB to luma)."""
    c = x.shape[-3]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(*x.shape[:-3], in_chans, *x.shape[-2:])
    if x.is_floating_point():
        return (x * torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(3, 1, 1)).sum(-3, keepdim=True)
    weights = torch.tensor([299, 587, 114], dtype=torch.int32, device=x.device).view(3, 1, 1)  # ITU-R 601, as PIL "L"
    return ((x.int() * weights).sum(-3, keepdim=True) + 500).div(1000, rounding_mode="floor").to(torch.uint8)


class ArrayDataset(Dataset):
    """Map-style data set of (uint8 C x H x W tensor, int label) from arrays in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], *, in_chans: int, name: str):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images, self.labels = images, labels.long()
        self.class_names, self.num_classes = list(class_names), len(class_names)
        self.in_chans, self.name = in_chans, name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return match_channels(self.images[i], self.in_chans), int(self.labels[i])

    def subset(self, indices: np.ndarray) -> "ArrayDataset":
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ArrayDataset(self.images[idx], self.labels[idx], self.class_names, in_chans=self.in_chans, name=self.name)

    def sample_name(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def open(self, i: int) -> Image.Image:
        """The stored image as PIL (native channels) for per-sample transforms."""
        a = self.images[i].permute(1, 2, 0).numpy()
        return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
