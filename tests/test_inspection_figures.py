"""`vitlab inspect` and the figures: written, of the expected pixel size, not blank, numbers matching the CSV."""

import csv

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

import vitlab
from vitlab.cli import main
from vitlab.data import BadImage, DataError
from vitlab.inspection import (attention_distance, dataset_batches, inspect_model, load_image_files,
                               normalise, resize)

FIGURES = ["rollout.png", "attention_heads.png", "attention_distance.png", "posemb_similarity.png",
           "embedding_filters.png"]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)


def assert_drawn(path, size):
    width, height = Image.open(path).size
    assert height == size[1] and (width == size[0] or size[0] is None), path
    assert pixels(path).std() > 10, f"{path} looks blank"
    assert path.stat().st_size < 150_000


@pytest.fixture
def checkpoint(tmp_path):
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, num_classes=3, depth=3))
    return vitlab.save_pretrained(model, tmp_path / "ckpt", label_names=["cat", "dog", "bird"])


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    rgb = tmp_path / "red square.png"
    a = np.zeros((50, 70, 3), np.uint8)
    a[10:40, 20:50, 0] = 255
    Image.fromarray(a).save(rgb)
    grey = tmp_path / "noise.jpg"
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(grey)
    return [rgb, grey]


def test_inspect_command_writes_every_figure(checkpoint, image_files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["inspect", "--checkpoint", str(checkpoint), *map(str, image_files), "--out", str(out),
                 "--no-progress"]) == 0
    assert "attention_distance.png" in capsys.readouterr().out
    assert_drawn(out / "rollout.png", (560, 210))  # 2 images side by side: (2 x 2.8 in, 1.7 + 0.4 in) at 100 dpi
    assert_drawn(out / "attention_heads.png", (None, 205))  # 2 rows (0.6 in + 0.85 in); width follows captions
    assert_drawn(out / "attention_distance.png", (640, 480))
    assert_drawn(out / "posemb_similarity.png", (640, 600))
    assert_drawn(out / "embedding_filters.png", (600, 390))  # 28 components, 7 x 4 tiles
    overlays = sorted((out / "rollout").iterdir())
    assert [p.name for p in overlays] == ["000_red_square.png", "001_noise.png"]
    for path in overlays:  # [input | overlay | input x mask], 32 px enlarged 7x to 224
        assert_drawn(path, (3 * 224 + 2 * 4, 224))

    model = vitlab.load_pretrained(checkpoint)
    images = load_image_files(image_files, model)
    expected, _ = attention_distance(model, [normalise(images, model)], progress=False)
    with open(out / "attention_distance.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 and rows[-1]["layer"] == "3" and rows[-1]["head"] == "2"
    got = np.array([float(r["mean_distance_px"]) for r in rows]).reshape(3, 2)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert {r["num_images"] for r in rows} == {"2"}


def test_rollout_overlay_follows_the_attention(tmp_path):
    """A model whose attention is all on one patch must light up that patch, not another."""
    from vitlab.inspection.figures import save_rollout_overlay
    image = np.full((32, 32, 3), 0.5)
    rollout = np.zeros((4, 4))
    rollout[0, 3] = 1.0  # top-right patch
    path = save_rollout_overlay(image, rollout, tmp_path / "o.png")
    masked = pixels(path)[:, 2 * (224 + 4):]  # the third panel: input x mask
    assert masked[28, -28].mean() == pytest.approx(128, abs=3)  # the patch's centre keeps the full image
    assert masked[-56:, :56].max() == 0 and masked[:56, :56].max() == 0  # far patches are masked out


class TinyGreyDataset:
    class_names = ["zero", "one"]

    def __init__(self, n):
        g = torch.Generator().manual_seed(1)
        self.images = torch.randint(0, 256, (n, 1, 20, 20), dtype=torch.uint8, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        if i == 2:
            raise BadImage(f"grey[{i}]", "cannot decode")
        return self.images[i], i % 2


def test_grey_gap_model_streams_a_data_set(tmp_path):
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, image_size=28, in_chans=1, classifier="gap"))
    data = TinyGreyDataset(11)
    with pytest.warns(UserWarning, match=r"grey\[2\]"):
        batches = list(dataset_batches(data, model, num_images=9, batch_size=4))
    assert [len(b) for b, _ in batches] == [4, 4, 1] and batches[0][0].shape[1:] == (1, 28, 28)
    assert batches[0][1] == ["zero", "one", "one", "zero"]  # image 2 skipped
    torch.testing.assert_close(batches[0][0][2].round(), resize(data.images[3], (28, 28)).float())
    written = inspect_model(model, tmp_path, batches[0][0], batches[0][1], distance_total=9,
                            distance_batches=(b for b, _ in batches), progress=False)
    assert set(FIGURES) <= {p.name for p in written.values()}
    assert_drawn(tmp_path / "embedding_filters.png", (600, 310))  # 16 grey components, 7 x 3 tiles
    with open(tmp_path / "attention_distance.csv") as f:
        assert {r["num_images"] for r in csv.DictReader(f)} == {"9"}


def test_hybrid_inspection_skips_the_filters(tmp_path):
    model = vitlab.create_model("R50+ViT-B/16", **tiny(image_size=32, resnet_layers=(1,)))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    written = inspect_model(model, tmp_path, images, ["a", "b"], figures_wanted=["distance", "filters"],
                            progress=False)
    assert sorted(written) == ["attention_distance", "attention_distance_csv"]


def test_bad_inputs_are_named(tmp_path, checkpoint, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    model = vitlab.load_pretrained(checkpoint)
    with pytest.raises(DataError, match="broken.png"):
        load_image_files([bad], model)
    assert main(["inspect", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["inspect", "--checkpoint", str(checkpoint), str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "broken.png" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown figure"):
        inspect_model(model, tmp_path, torch.zeros(1, 3, 32, 32, dtype=torch.uint8), ["x"], figures_wanted=["pca"])


def test_inspect_command_on_fashion_mnist(tmp_path):
    from vitlab import data
    try:
        data.build_dataset("fashion_mnist", "test[:1%]", in_chans=1, download=False)
    except data.DataError as e:
        pytest.skip(f"Fashion-MNIST not available here: {e}")
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, image_size=28, in_chans=1, num_classes=10))
    ckpt = vitlab.save_pretrained(model, tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["inspect", "--checkpoint", str(ckpt), "--data", "fashion_mnist", "--num-images", "20",
                 "--show", "3", "--batch-size", "8", "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "rollout").iterdir())) == 3
    with open(out / "attention_distance.csv") as f:
        assert {r["num_images"] for r in csv.DictReader(f)} == {"20"}


@pytest.mark.parametrize("to,name", [("npz", "official.npz"), ("timm", "timm.safetensors"), ("hf", "hf")])
def test_inspect_command_reads_other_checkpoint_formats(to, name, tmp_path, image_files):
    from vitlab.checkpoints import export_checkpoint
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, num_heads=4))
    path = export_checkpoint(model, tmp_path / name, to)
    out = tmp_path / "out"
    assert main(["inspect", "--checkpoint", str(path), str(image_files[0]), "--num-heads", "4", "--out", str(out),
                 "--figures", "rollout,posemb", "--no-progress"]) == 0
    assert_drawn(out / "attention_heads.png", (None, 145))  # one image, one row
    assert_drawn(out / "posemb_similarity.png", (640, 600))


def test_inspect_runs_in_the_precision_asked(checkpoint, image_files, tmp_path):
    """--precision autocasts the forward passes as every evaluating command does; fp32 (the default) is exact."""
    def distances(*precision):
        out = tmp_path / "-".join(precision or ("default",))
        assert main(["inspect", "--checkpoint", str(checkpoint), *map(str, image_files), "--out", str(out),
                     "--figures", "distance", "--device", "cpu", "--no-progress", *precision]) == 0
        with open(out / "attention_distance.csv") as f:
            return np.array([float(r["mean_distance_px"]) for r in csv.DictReader(f)])

    exact, fp32, bf16 = distances(), distances("--precision", "fp32"), distances("--precision", "bf16")
    assert np.array_equal(exact, fp32)
    assert not np.array_equal(exact, bf16) and np.allclose(exact, bf16, rtol=0.05)
