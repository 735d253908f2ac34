import importlib.util
import sys
from pathlib import Path

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


def load_benchmark(name: str):
    """benchmarks/NAME.py imported as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
