"""The loader: batches, determinism, exact mid-epoch resume, rank sharding, bad input, config checks."""
import io
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import DataConfig, DataError, build_loader
from vitlab.data.arrays import ArrayDataset


def toy_arrays(n=100, channels=1, size=12, classes=4) -> ArrayDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)], in_chans=3, name="toy")


def cfg(**kw) -> DataConfig:
    base = dict(dataset="fashion_mnist", image_size=12, in_chans=3, batch_size=8, seed=3)
    return DataConfig(**{**base, **kw})


def take(loader, n=None):
    out = []
    for i, (x, y) in enumerate(loader):
        out.append((x.clone(), y.clone()))
        if n is not None and i + 1 == n:
            break
    return out


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


# ---- in-memory path ----------------------------------------------------------------------------
def test_train_batches_shape_range_and_len():
    loader = build_loader(cfg(), "train", train=True, dataset=toy_arrays())
    assert len(loader) == 12 and loader.num_classes == 4 and loader.class_names[3] == "c3"
    batches = take(loader)
    assert len(batches) == 12
    x, y = batches[0]
    assert x.shape == (8, 3, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.8 and x.max() > 0.8
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated to 3 channels
    seen = torch.cat([y for _, y in batches])
    assert len(seen) == 96 and np.bincount(seen.numpy()).max() <= 25


def test_fashion_mnist_loader_end_to_end(tmp_path):
    from test_data_sources import write_fmnist

    write_fmnist(tmp_path, n=64)
    c = cfg(root=str(tmp_path), image_size=28, in_chans=1, batch_size=16, train_split="train[:75%]",
            eval_split="train[75%:]")
    train, dev = build_loader(c, c.train_split, train=True), build_loader(c, c.eval_split, train=False)
    assert (len(train), len(dev)) == (3, 1)
    x, y = next(iter(train))
    assert x.shape == (16, 1, 28, 28) and y.shape == (16,)


def test_same_seed_same_batches_and_epochs_reshuffle():
    ds = toy_arrays()
    a = take(build_loader(cfg(), "train", train=True, dataset=ds))
    b = take(build_loader(cfg(), "train", train=True, dataset=ds))
    assert same(a, b)
    loader = build_loader(cfg(), "train", train=True, dataset=ds)
    e0, e1 = take(loader), take(loader)
    assert loader.epoch == 2 and not torch.equal(e0[0][1], e1[0][1])
    other = take(build_loader(cfg(), "train", train=True, dataset=ds, epoch_seed=4))
    assert not torch.equal(other[0][1], a[0][1])


DEIT = dict(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, random_erasing=0.25)


@pytest.mark.parametrize("extra", [{}, DEIT], ids=["plain", "deit"])
def test_resume_mid_epoch_in_memory(extra):
    ds, c = toy_arrays(), cfg(**extra)
    full = build_loader(c, "train", train=True, dataset=ds)
    reference = take(full) + take(full)  # two epochs
    first = build_loader(c, "train", train=True, dataset=ds)
    got = take(first, 5)
    state = first.state_dict()
    second = build_loader(c, "train", train=True, dataset=ds)
    second.load_state_dict(state)
    got += take(second) + take(second)
    assert same(got[:5], reference[:5]) and same(got, reference)


def test_soft_targets_when_mixing():
    loader = build_loader(cfg(**DEIT), "train", train=True, dataset=toy_arrays())
    for x, t in loader:
        assert t.shape == (8, 4) and t.dtype == torch.float32
        assert torch.allclose(t.sum(1), torch.ones(8)) and (t > 0).all()


def test_eval_ranks_are_disjoint_and_complete():
    ds, c = toy_arrays(n=50), cfg(batch_size=7, resize_crop=True)
    seen = []
    for rank in range(3):
        loader = build_loader(c, "test", train=False, rank=rank, world_size=3, dataset=ds)
        batches = take(loader)
        assert loader.batch_size == 7 // 3  # per rank
        assert len(batches) == len(loader) == -(-len(range(rank, 50, 3)) // 2)
        seen += [int(i) for i in loader.rank_indices(0)]
        assert sum(len(y) for _, y in batches) == len(range(rank, 50, 3))
    assert sorted(seen) == list(range(50))
    x, y = take(build_loader(cfg(), "test", train=False, dataset=ds))[0]
    assert y.tolist() == [i % 4 for i in range(8)]  # eval order is the data set's order


def test_train_ranks_split_the_epoch():
    ds = toy_arrays()
    labels = [torch.cat([y for _, y in take(build_loader(cfg(batch_size=8), "train", train=True, rank=r,
                                                         world_size=2, dataset=ds))]) for r in range(2)]
    assert all(len(l) == 48 for l in labels)  # per-rank batch = 8 // 2 = 4; 50 samples per rank
    loader = build_loader(cfg(batch_size=8), "train", train=True, rank=1, world_size=2, dataset=ds)
    assert loader.batch_size == 4 and set(loader.rank_indices(0)).isdisjoint(
        build_loader(cfg(batch_size=8), "train", train=True, rank=0, world_size=2, dataset=ds).rank_indices(0))
    assert build_loader(cfg(), "train", train=True, dataset=ds, batch_size=2).batch_size == 2


def test_randaugment_path_resumes():
    ds, c = toy_arrays(n=40), cfg(randaugment_n=2, randaugment_m=9)
    reference = take(build_loader(c, "train", train=True, dataset=ds))
    first = build_loader(c, "train", train=True, dataset=ds)
    got = take(first, 2)
    second = build_loader(c, "train", train=True, dataset=ds)
    second.load_state_dict(first.state_dict())
    assert same(got + take(second), reference)


# ---- files: workers, bad input -----------------------------------------------------------------
def png(color, size=(20, 16), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_folder(root: Path, per_class=12, classes=3) -> Path:
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            data = jpeg((c * 80, i * 20, 0)) if i % 2 else png((c * 80, i * 20, 0))
            (root / f"class{c}" / f"{i:03d}.{'jpg' if i % 2 else 'png'}").write_bytes(data)
    return root


def test_files_resume_with_two_workers(tmp_path):
    spec = f"folder:{make_folder(tmp_path)}"
    c = cfg(dataset=spec, batch_size=4, num_workers=0, **DEIT)
    reference = take(build_loader(c, "train", train=True))  # single process
    c2 = cfg(dataset=spec, batch_size=4, num_workers=2, **DEIT)
    first = build_loader(c2, "train", train=True)
    got = take(first, 3)
    second = build_loader(c2, "train", train=True)
    second.load_state_dict(first.state_dict())
    got += take(second)
    assert len(reference) == 9 and same(got, reference)  # and the worker count changes nothing


def png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD = {
    "zero.jpg": b"",
    "truncated.jpg": jpeg((9, 9, 9), (64, 48))[:300],
    "garbage.png": b"\x00\x01 definitely not an image " * 20,
    "html.jpg": b"<html><body>404 Not Found</body></html>",
    "bomb.png": png_with_size(30000, 30000),  # 900 Mpx header, bytes of data
    "big.png": png((1, 2, 3), (120, 100)),  # over max_pixels=10_000 below
    "corrupt.png": png((5, 5, 5))[:40] + b"\xff" * 60,
}


def test_bad_files_are_skipped_logged_and_counted(tmp_path, caplog):
    root = make_folder(tmp_path / "data", per_class=4, classes=2)
    for name, data in BAD.items():
        (root / "class1" / name).write_bytes(data)
    (root / "class1" / "really_a_png.jpg").write_bytes(png((200, 0, 0)))  # read by its content, not its name
    (root / "empty_class").mkdir()
    c = cfg(dataset=f"folder:{root}", batch_size=4, max_pixels=10_000, num_workers=0)
    caplog.set_level(logging.WARNING)
    train = build_loader(c, "train", train=True)
    assert train.num_classes == 2 and "empty class folder" in caplog.text
    batches = take(train)
    assert len(batches) == len(train) == 4 and all(len(y) == 4 for _, y in batches)  # bad ones replaced
    assert set(Path(f).name for f in train.bad_files) == set(BAD)
    assert train.skipped >= len(BAD)
    for name in BAD:
        assert name in caplog.text

    ev = build_loader(c, "train", train=False)
    n = sum(len(y) for _, y in take(ev))
    assert n == 9 and ev.skipped == len(BAD) and len(ev.bad_files) == len(BAD)  # dropped, never padded


def test_bad_files_with_workers(tmp_path):
    root = make_folder(tmp_path / "data", per_class=4, classes=2)
    for name, data in BAD.items():
        (root / "class0" / name).write_bytes(data)
    ev = build_loader(cfg(dataset=f"folder:{root}", batch_size=3, num_workers=2, max_pixels=10_000), "train",
                      train=False)
    assert sum(len(y) for _, y in take(ev)) == 8 and ev.skipped == len(BAD)


def test_loader_refuses_missing_data(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_loader(cfg(dataset=f"folder:{tmp_path / 'nope'}"), "train", train=True)
    with pytest.raises(DataError, match="make no batch of 500"):
        build_loader(cfg(batch_size=500), "train", train=True, dataset=toy_arrays())


# ---- shards ----------------------------------------------------------------------------------
def test_shards_resume_with_two_workers(tmp_path):
    from test_data_sources import write_shards

    # 3 shards over 2 workers: one worker streams 2 shards (5 batches), the other 1 (2 batches),
    # so the round-robin order is w0 w1 w0 w1 w0 w0 w0: the second worker runs dry mid-epoch.
    spec = write_shards(tmp_path, n_shards=3, per_shard=10)
    c = cfg(dataset=spec, batch_size=4, num_workers=2, shuffle_buffer=5, **DEIT)
    full = build_loader(c, "train", train=True)
    reference = take(full)
    assert len(reference) == 7
    for stop in (3, 6):  # 3: the next batch is the second worker's; 6: after it ran dry
        first = build_loader(c, "train", train=True)
        got = take(first, stop)
        second = build_loader(c, "train", train=True)
        second.load_state_dict(first.state_dict())
        assert same(got + take(second), reference), stop
    assert not same(take(full), reference)  # a new epoch reshuffles


def test_shards_skip_bad_samples(tmp_path, caplog):
    from test_data_sources import write_shards

    spec = write_shards(tmp_path, n_shards=2, per_shard=10, bad={3, 12})
    c = cfg(dataset=spec, batch_size=4, num_workers=0)
    train = build_loader(c, "train", train=True)
    assert sum(len(y) for _, y in take(train)) == 16 and train.skipped == 2
    assert sorted(train.bad_files) == [f"{tmp_path}/train-000.tar:000003", f"{tmp_path}/train-001.tar:000012"]
    assert "train-001.tar:000012" in caplog.text
    ev = build_loader(c, "train", train=False)
    assert sum(len(y) for _, y in take(ev)) == 18 and ev.skipped == 2


def test_shards_eval_ranks_disjoint(tmp_path):
    from test_data_sources import write_shards

    spec = write_shards(tmp_path, n_shards=4, per_shard=5)
    c = cfg(dataset=spec, batch_size=3, num_workers=0)
    keys = []
    for rank in range(2):
        for x, _ in build_loader(c, "train", train=False, rank=rank, world_size=2):
            keys += torch.round((x[:, 1, 0, 0] + 1) * 127.5).long().tolist()
    assert sorted(keys) == list(range(20))
    assert len(build_loader(c, "train", train=True)) == 6  # from sizes.json


# ---- config --------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "data.batch_size = 0: must be a positive integer"),
    ("image_size", -3, "data.image_size = -3"),
    ("in_chans", 4, "data.in_chans = 4: must be 1 or 3"),
    ("crop_area", (0.5, 0.2), "data.crop_area = (0.5, 0.2)"),
    ("normalisation", "zscore", "data.normalisation = 'zscore'"),
    ("mixup_alpha", -1.0, "data.mixup_alpha = -1.0"),
    ("random_erasing", 1.5, "data.random_erasing = 1.5"),
    ("num_workers", -1, "data.num_workers = -1"),
    ("dataset", "imagenet", "unknown dataset 'imagenet'"),
    ("train_split", "train[:x]", "bad split bound 'x'"),
])
def test_config_refuses_bad_values(field, value, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        DataConfig(**{field: value})


def test_config_from_toml_table():
    c = DataConfig.from_dict({"dataset": "cifar10", "crop_area": [0.08, 1.0], "batch_size": 512})
    assert c.crop_area == (0.08, 1.0) and "label_smoothing" in DataConfig.field_names()
    assert DataConfig.from_dict(c.to_dict()) == c
    with pytest.raises(DataError, match=r"unknown \[data\] setting\(s\) \['bach_size'\]"):
        DataConfig.from_dict({"bach_size": 3})


def test_command_line_scan(tmp_path, capsys):
    from vitlab.data.__main__ import main

    root = make_folder(tmp_path / "d", per_class=3, classes=2)
    (root / "class0" / "zero.jpg").write_bytes(b"")
    assert main([f"folder:{root}", "--image-size", "16", "--scan"]) == 0
    out = capsys.readouterr().out
    assert "7 samples, 2 classes: class0, class1" in out and "decoded 6 images" in out and "zero.jpg" in out
    assert main([f"folder:{tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
