"""Fixtures shared by the evaluation tests (imported by name into each test module)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models only lose from intra-op threads, and badly so on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
