import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(**overrides):
    """Overrides that shrink any ViT to a few thousand parameters, for fast tests."""
    base = dict(width=32, depth=2, mlp_dim=64, num_heads=2, image_size=32, num_classes=5)
    base.update(overrides)
    return base
