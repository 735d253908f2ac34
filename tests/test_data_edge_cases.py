"""Bad input at the edges of the data sources (issue 13 §5): each is skipped and counted, nothing hangs or
stops the scan, and nothing is read whole that claims to be huge."""

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from test_data_loader import cfg, png_with_size, take
from test_data_sources import write_shards
from vitlab.data import build_dataset, build_loader
from vitlab.data import shards as shards_module


@contextmanager
def deadline(seconds=20):
    """Fail (instead of hanging the suite) when the body blocks, e.g. on opening a named pipe."""
    def expire(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def png_bytes(colour=(10, 20, 30), size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def add_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# ---- shards -------------------------------------------------------------------------------------
def test_a_cls_label_that_is_not_utf8_skips_the_sample_not_the_shard(tmp_path):
    spec = write_shards(tmp_path, n_shards=1, per_shard=3)
    with tarfile.open(tmp_path / "train-000.tar", "a") as tar:  # one more sample, its label bytes not UTF-8
        add_member(tar, "000099.png", png_bytes())
        add_member(tar, "000099.cls", b"\xff\xfe\x00")
        add_member(tar, "000100.png", png_bytes())
        add_member(tar, "000100.cls", b"1")
    ds = build_dataset(spec, "train")
    assert len(list(ds)) == 4 and ds.skipped == 1
    loader = build_loader(cfg(dataset=spec, batch_size=2, num_workers=0), "train", train=False)
    assert sum(len(y) for _, y in take(loader)) == 4 and loader.skipped == 1
    assert loader.bad_files == [f"{tmp_path}/train-000.tar:000099"]


def test_a_member_over_max_member_bytes_is_skipped_unread(tmp_path, monkeypatch):
    spec = write_shards(tmp_path, n_shards=1, per_shard=3)
    with tarfile.open(tmp_path / "train-000.tar", "a") as tar:
        add_member(tar, "000099.png", png_bytes(size=(200, 200)) + b"\0" * 5000)  # > 5000 bytes
        add_member(tar, "000099.cls", b"1")
    read_sizes = []
    real_extract = tarfile.TarFile.extractfile

    def spy(self, member):
        read_sizes.append(member.size)
        return real_extract(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    loader = build_loader(cfg(dataset=spec, batch_size=2, num_workers=0, max_member_bytes=5000), "train",
                          train=False)
    assert sum(len(y) for _, y in take(loader)) == 3 and loader.skipped == 1
    assert max(read_sizes) <= 5000  # the big member was never read
    with pytest.raises(ValueError, match="max_member_bytes"):
        cfg(max_member_bytes=0)


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar to write a sparse member")
def test_a_sparse_member_claiming_2_gb_is_skipped_by_default(tmp_path):
    work = tmp_path / "members"
    work.mkdir()
    names = []
    for key, label in (("000000", 0), ("000001", 1), ("000002", 1)):
        (work / f"{key}.png").write_bytes(png_bytes())
        (work / f"{key}.cls").write_text(str(label))
        names += [f"{key}.png", f"{key}.cls"]
    with open(work / "000001.png", "wb") as f:
        f.truncate(2 * 2**30)  # 2 GiB of holes: a few KB once tarred with --sparse
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "classes.txt").write_text("a\nb\n")
    subprocess.run(["tar", "--sparse", "-cf", str(shards / "train-000.tar"), "-C", str(work), *names], check=True)
    assert (shards / "train-000.tar").stat().st_size < 1_000_000
    assert max(m.size for m in tarfile.open(shards / "train-000.tar")) == 2 * 2**30
    ds = build_dataset(f"shards:{shards}/train-000.tar", "train")
    assert [y for _, y in ds] == [0, 1] and ds.skipped == 1


def test_vitlab_eval_on_shards_counts_the_skipped_samples(tmp_path, capsys):
    from conftest import tiny
    from vitlab import create_model, save_pretrained
    from vitlab.cli import main

    spec = write_shards(tmp_path / "data", n_shards=2, per_shard=5, bad={1, 6, 7})
    model = create_model("ViT-Ti/16", **tiny(patch_size=4, image_size=8, num_classes=5))
    ckpt = save_pretrained(model, tmp_path / "ckpt")
    for workers in ("0", "2"):
        out = tmp_path / f"eval-{workers}"
        assert main(["eval", "--checkpoint", str(ckpt), "--data", spec, "--split", "train", "--batch-size", "4",
                     "--num-workers", workers, "--device", "cpu", "--out", str(out)]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["skipped_images"] == 3 and metrics["num_samples"] == 7, workers


# ---- image folders --------------------------------------------------------------------------------
def test_a_png_named_jpg_is_decoded_by_its_content(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "real.png").write_bytes(png_bytes((200, 0, 0)))
    (tmp_path / "a" / "really_a_png.jpg").write_bytes(png_bytes((0, 200, 0)))
    ds = build_dataset(f"folder:{tmp_path}", "train")
    x, y = ds[ds.files.index(str(tmp_path / "a" / "really_a_png.jpg"))]
    assert y == 0 and x[:, 0, 0].tolist() == [0, 200, 0]
    loader = build_loader(cfg(dataset=f"folder:{tmp_path}", batch_size=3), "train", train=False)
    assert sum(len(y) for _, y in take(loader)) == 3 and loader.skipped == 0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_in_a_class_folder_is_skipped_and_counted(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.png").write_bytes(png_bytes())
    os.mkfifo(tmp_path / "a" / "p.png")
    with deadline():
        ds = build_dataset(f"folder:{tmp_path}", "train")
        assert len(ds) == 2 and [p for p, _ in ds.unlisted] == [str(tmp_path / "a" / "p.png")]
        loader = build_loader(cfg(dataset=f"folder:{tmp_path}", batch_size=2), "train", train=False)
        assert sum(len(y) for _, y in take(loader)) == 2 and loader.skipped == 1
        from vitlab.evaluation import EvalBatches

        batches = EvalBatches(ds, image_size=8, batch_size=2)
        assert sum(len(y) for _, y, _ in batches) == 2 and batches.skipped == 1


# ---- inspection -----------------------------------------------------------------------------------
def test_inspect_skips_a_decompression_bomb_and_names_it(tmp_path, capsys):
    from vitlab import create_model
    from vitlab.cli import main
    from vitlab.inspection import load_image_files

    good, bomb = tmp_path / "good.png", tmp_path / "bomb.png"
    good.write_bytes(png_bytes(size=(16, 16)))
    bomb.write_bytes(png_with_size(30000, 30000))  # 900 Mpx: Pillow's DecompressionBombError
    model = create_model("ViT-Ti/16", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                         num_classes=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = load_image_files([good, bomb], model)
    assert images.shape == (1, 3, 16, 16)
    assert any(str(bomb) in str(w.message) and "decompression bomb" in str(w.message) for w in caught)
    # only the bomb: one line on stderr naming it, exit code 2, no traceback
    code = main(["inspect", "--model", "ViT-Ti/16", "--image-size", "16", str(bomb), "--out", str(tmp_path / "o"),
                 "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and str(bomb) in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_inspect_data_batches_skip_a_bomb_in_a_folder(tmp_path):
    from vitlab.inspection import dataset_batches
    from vitlab import create_model

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "good.png").write_bytes(png_bytes(size=(16, 16)))
    (tmp_path / "a" / "bomb.png").write_bytes(png_with_size(30000, 30000))
    model = create_model("ViT-Ti/16", image_size=16, patch_size=8, width=16, depth=1, num_heads=2, mlp_dim=32,
                         num_classes=1)
    ds = build_dataset(f"folder:{tmp_path}", "train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dataset_batches(ds, model, 4, 4))
    assert batches[0][0].shape[0] == 1 and any("bomb.png" in str(w.message) for w in caught)
    assert torch.is_tensor(batches[0][0]) and np.isfinite(batches[0][0].float().numpy()).all()
