"""Each source builds from small files made here; missing data is refused with a useful message."""
import functools
import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import DataError, build_dataset
from vitlab.data import fashion_mnist
from vitlab.data.shards import expand_braces


# ---- Fashion-MNIST ---------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fmnist(directory: Path, n=20, gz=True, seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n)
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for stem, arr in zip(fashion_mnist.FILES[split], (images, labels)):
            data = idx_bytes(arr)
            (directory / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return images, labels


@pytest.fixture
def no_system_fmnist(monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", [])
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_root(tmp_path, no_system_fmnist, gz):
    images, labels = write_fmnist(tmp_path / "fm", gz=gz)
    ds = build_dataset("fashion_mnist", "train", root=tmp_path / "fm", in_chans=1)
    assert len(ds) == 20 and ds.num_classes == 10 and ds.class_names[9] == "Ankle boot"
    x, y = ds[3]
    assert x.dtype == torch.uint8 and x.shape == (1, 28, 28)
    assert torch.equal(x[0], torch.from_numpy(images[3].astype(np.uint8))) and y == labels[3]
    x3, _ = build_dataset("fashion_mnist", "test", root=tmp_path / "fm", in_chans=3)[3]
    assert x3.shape == (3, 28, 28) and torch.equal(x3[1], x[0])  # grey repeated to the model's channels


def test_fashion_mnist_missing_is_refused(tmp_path, no_system_fmnist):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*not found in .*nowhere"):
        build_dataset("fashion_mnist", "train", root=tmp_path / "nowhere", download=False)
    write_fmnist(tmp_path / "fm")
    with pytest.raises(DataError, match="splits"):
        build_dataset("fashion_mnist", "validation", root=tmp_path / "fm")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_system_copy():
    ds = build_dataset("fashion_mnist", "test", root="/nonexistent", in_chans=1, download=False)
    assert len(ds) == 10_000 and ds.images.shape == (10_000, 1, 28, 28)
    assert np.bincount(ds.labels.numpy()).tolist() == [1000] * 10


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_fashion_mnist_download_checks_md5(tmp_path, no_system_fmnist, file_server, monkeypatch):
    served, url = file_server
    images, labels = write_fmnist(served)
    checksums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in served.iterdir()}
    monkeypatch.setenv("VITLAB_FASHION_MNIST_URL", url)
    monkeypatch.setattr(fashion_mnist, "MD5", checksums)
    ds = build_dataset("fashion_mnist", "train", in_chans=1)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert (tmp_path / "cache" / "fashion-mnist" / "train-labels-idx1-ubyte.gz").is_file()


def test_download_with_wrong_checksum_is_refused(tmp_path, no_system_fmnist, file_server, monkeypatch):
    served, url = file_server
    write_fmnist(served)
    monkeypatch.setenv("VITLAB_FASHION_MNIST_URL", url)
    monkeypatch.setattr(fashion_mnist, "MD5", {n: "0" * 32 for n in fashion_mnist.MD5})
    with pytest.raises(DataError, match="checksum mismatch.*refused"):
        build_dataset("fashion_mnist", "train", in_chans=1)
    assert not list((tmp_path / "cache").rglob("*.gz*"))  # nothing half-trusted left behind


# ---- CIFAR ---------------------------------------------------------------------------------------
def write_cifar(root: Path, which: str, n_train=12, n_test=5, extracted=False):
    rng = np.random.default_rng(1)
    label_bytes, classes = (1, 10) if which == "cifar10" else (2, 100)
    folder = "cifar-10-batches-bin" if which == "cifar10" else "cifar-100-binary"
    def records(n):
        px = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        lab = rng.integers(0, classes, (n, label_bytes), dtype=np.uint8)
        return np.concatenate([lab, px], 1), px.reshape(n, 3, 32, 32), lab[:, -1]
    files, truth = {}, {}
    if which == "cifar10":
        parts = [records(n_train // 4) for _ in range(4)] + [records(n_train - 3 * (n_train // 4))]
        for i, (rec, _, _) in enumerate(parts, 1):
            files[f"data_batch_{i}.bin"] = rec.tobytes()
        truth["train"] = (np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts]))
        rec, px, lab = records(n_test)
        files["test_batch.bin"], truth["test"] = rec.tobytes(), (px, lab)
        files["batches.meta.txt"] = "\n".join(f"class{i}" for i in range(10)).encode() + b"\n\n"
    else:
        for split, n in (("train", n_train), ("test", n_test)):
            rec, px, lab = records(n)
            files[f"{split}.bin"], truth[split] = rec.tobytes(), (px, lab)
        files["fine_label_names.txt"] = "\n".join(f"fine{i}" for i in range(100)).encode()
    root.mkdir(parents=True, exist_ok=True)
    if extracted:
        (root / folder).mkdir()
        for name, data in files.items():
            (root / folder / name).write_bytes(data)
    else:
        archive = "cifar-10-binary.tar.gz" if which == "cifar10" else "cifar-100-binary.tar.gz"
        with tarfile.open(root / archive, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{folder}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return truth


@pytest.mark.parametrize("which,extracted", [("cifar10", False), ("cifar10", True), ("cifar100", False)])
def test_cifar_binary(tmp_path, which, extracted):
    truth = write_cifar(tmp_path, which, extracted=extracted)
    for split in ("train", "test"):
        ds = build_dataset(which, split, root=tmp_path, download=False)
        px, lab = truth[split]
        assert len(ds) == len(px) and ds.num_classes == (10 if which == "cifar10" else 100)
        x, y = ds[len(ds) - 1]
        assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(px[-1])) and y == lab[-1]
    assert ds.class_names[1] == ("class1" if which == "cifar10" else "fine1")
    grey, _ = build_dataset(which, "test", root=tmp_path, in_chans=1, download=False)[0]
    assert grey.shape == (1, 32, 32)


def test_cifar_missing_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"cifar-100-binary.tar.gz nor cifar-100-binary/ found in .*empty"):
        build_dataset("cifar100", "train", root=tmp_path / "empty", download=False)


# ---- image folders ---------------------------------------------------------------------------
def image_bytes(mode: str, fmt: str, size=(40, 30), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


KINDS = [("RGB", "JPEG", "a.jpg"), ("L", "PNG", "b.png"), ("P", "PNG", "c.png"), ("RGBA", "PNG", "d.png"),
         ("CMYK", "JPEG", "e.jpeg"), ("I;16", "PNG", "f.png"), ("RGB", "WEBP", "g.webp"), ("RGB", "BMP", "h.bmp"),
         ("LA", "PNG", "i.PNG")]


@pytest.mark.parametrize("in_chans", [1, 3])
def test_folder_formats_and_modes(tmp_path, in_chans):
    for mode, fmt, name in KINDS:
        for cls in ("cat", "dog"):
            (tmp_path / cls).mkdir(exist_ok=True)
            (tmp_path / cls / name).write_bytes(image_bytes(mode, fmt))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = build_dataset(f"folder:{tmp_path}", "train", in_chans=in_chans)
    assert ds.class_names == ["cat", "dog"] and len(ds) == 2 * len(KINDS)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.uint8 and x.shape == (in_chans, 30, 40), ds.files[i]
        assert y == (0 if i < len(KINDS) else 1)
    # 16-bit is scaled (not clipped) to 8 bits: a mid-grey 16-bit value lands mid-range.
    (tmp_path / "cat" / "f.png").write_bytes(_png16(np.full((30, 40), 32768, np.uint16)))
    x, _ = ds[[Path(f).name for f in ds.files].index("f.png")]
    assert int(x.float().mean()) == 128


def _png16(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_folder_splits_share_class_ids(tmp_path, caplog):
    for split, classes in (("train", ["a", "b", "c"]), ("val", ["b", "c"])):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            (tmp_path / split / c / "x.png").write_bytes(image_bytes("RGB", "PNG"))
    (tmp_path / "val" / "a").mkdir()  # empty class folder: warned about, skipped
    val = build_dataset(f"folder:{tmp_path}", "val")
    assert val.class_names == ["a", "b", "c"] and sorted(val.labels.tolist()) == [1, 2]
    assert "empty class folder" in caplog.text and str(tmp_path / "val" / "a") in caplog.text
    with pytest.raises(DataError, match=r"no split folder 'test'.*" + str(tmp_path / "test")):
        build_dataset(f"folder:{tmp_path}", "test")


def test_folder_missing_or_empty_is_refused(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'missing'} does not exist"):
        build_dataset(f"folder:{tmp_path / 'missing'}", "train")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=f"no images .* in class sub-folders of {tmp_path / 'empty'}"):
        build_dataset(f"folder:{tmp_path / 'empty'}", "train")


# ---- shards ---------------------------------------------------------------------------------------
def write_shards(directory: Path, n_shards=3, per_shard=4, prefix="train", sizes=True, bad=()):
    """Shards of 8x8 PNGs whose label is encoded in the pixel value (label * 20)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "classes.txt").write_text("\n".join(f"c{i}" for i in range(5)))
    counts, k = {}, 0
    for s in range(n_shards):
        name = f"{prefix}-{s:03d}.tar"
        with tarfile.open(directory / name, "w") as tar:
            for _ in range(per_shard):
                label = k % 5
                img = io.BytesIO()
                Image.new("RGB", (8, 8), (label * 20, k % 256, 0)).save(img, "PNG")
                payload = {"png": b"garbage" if k in bad else img.getvalue(), "cls": str(label).encode()}
                for ext, data in payload.items():
                    info = tarfile.TarInfo(f"{k:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                k += 1
        counts[name] = per_shard
    if sizes:
        (directory / "sizes.json").write_text(json.dumps(counts))
    return f"shards:{directory}/{prefix}-{{000..{n_shards - 1:03d}}}.tar"


def test_expand_braces():
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]


def test_shards_stream_every_sample(tmp_path):
    spec = write_shards(tmp_path)
    ds = build_dataset(spec, "train")
    samples = list(ds)
    assert len(samples) == 12 and ds.num_classes == 5 and ds.num_samples == 12
    assert all(x.shape == (3, 8, 8) and x[0, 0, 0] == 20 * y for x, y in samples)
    assert [int(x[1, 0, 0]) for x, _ in samples] == list(range(12))


def test_shards_percent_split_by_key(tmp_path):
    spec = write_shards(tmp_path, per_shard=20)
    dev, train = build_dataset(spec, "train[80%:]"), build_dataset(spec, "train[:80%]")
    keys = lambda d: {int(x[1, 0, 0]) for x, _ in d}
    assert keys(dev).isdisjoint(keys(train)) and keys(dev) | keys(train) == set(range(60))
    assert 4 <= len(keys(dev)) <= 20 and dev.num_samples == 12


def test_shards_refusals(tmp_path):
    spec = write_shards(tmp_path)
    with pytest.raises(DataError, match=r"no \{split\} placeholder.*'test'"):
        build_dataset(spec, "test")
    with pytest.raises(DataError, match="percentages"):
        build_dataset(spec, "train[:10]")
    with pytest.raises(DataError, match=r"1 of 4 shard files.*train-003.tar"):
        build_dataset(f"shards:{tmp_path}/train-{{000..003}}.tar", "train")
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt not found"):
        build_dataset(spec, "train")


def test_shards_split_placeholder(tmp_path):
    write_shards(tmp_path, prefix="train")
    write_shards(tmp_path, n_shards=1, prefix="test")
    assert len(list(build_dataset(f"shards:{tmp_path}/{{split}}-000.tar", "test"))) == 4


# ---- spec errors -----------------------------------------------------------------------------
def test_unknown_spec_is_refused():
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", "train")
    with pytest.raises(DataError, match="bad split spec"):
        build_dataset("cifar10", "train[::2]")
