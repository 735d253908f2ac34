"""Evaluation under two gloo processes (the torchrun path) gives exactly the single-process result."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import tiny
from vitlab import create_model
from vitlab.evaluation import EvalBatches, evaluate, extract_features
from vitlab.runtime import setup, teardown

NUM_SAMPLES = 7  # not divisible by the 2 processes: one rank gets a sample more, none is padded or repeated


class RandomImages(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (NUM_SAMPLES, 3, 20, 20), dtype=torch.uint8, generator=g)
        self.labels = torch.randint(0, 5, (NUM_SAMPLES,), generator=g)
        self.real = [[int(y)] if i % 3 else [] for i, y in enumerate(self.labels)]

    def __len__(self):
        return NUM_SAMPLES

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def model_and_data():
    torch.manual_seed(0)
    model = create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=16, representation_size=12))
    return model, RandomImages()


def run_eval(rank=0, world_size=1):
    model, data = model_and_data()
    batches = EvalBatches(data, image_size=16, batch_size=2, rank=rank, world_size=world_size)
    result = evaluate(model, batches, ks=(1, 2, 5), real_labels=data.real, progress=False)
    features, labels, indices = extract_features(model, batches, progress=False)
    return result, features, labels, indices


def _worker(rank, port, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    d = setup("cpu")
    assert (d.rank, d.world_size) == (rank, 2)
    result, features, labels, indices = run_eval(rank, 2)
    torch.save({"result": result, "features": features, "labels": labels, "indices": indices}, f"{out}.{rank}")
    teardown()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_processes_equal_one(tmp_path):
    out = tmp_path / "rank"
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    single, features, labels, indices = run_eval()
    assert single["num_samples"] == NUM_SAMPLES and single["real_num_samples"] == 4
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=True)
        assert json.dumps(got["result"]) == json.dumps(single)  # every count identical, NaN included
        assert torch.equal(got["indices"], torch.arange(NUM_SAMPLES)) and torch.equal(got["labels"], labels)
        torch.testing.assert_close(got["features"], features)
