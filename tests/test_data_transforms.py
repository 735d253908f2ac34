"""Geometry of the paper's transforms, the batched in-memory versions, and DeiT augmentation."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import augment
from vitlab.training.losses import classification_loss
from vitlab.data.randaugment import OPS, RandAugment
from vitlab.data.splits import parse_split, select
from vitlab.data.preprocessing import Preprocessing
from vitlab.data.transforms import CropResize, centre_box, crop_flip_batch, sample_crop_boxes
from vitlab.data import DataError


# ---- split specs -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,expected", [("train", (0, 1000)), ("train[:98%]", (0, 980)), ("train[98%:]", (980, 1000)),
                                           ("train[:1000]", (0, 1000)), ("train[10:20]", (10, 20)),
                                           ("test[50%:75%]", (500, 750)), ("train[:5000]", (0, 1000))])
def test_split_bounds(spec, expected):
    assert parse_split(spec).bounds(1000) == expected


def test_split_selection_is_seeded_and_complementary():
    a, b = select(parse_split("train[:98%]"), 1000, 0, "x"), select(parse_split("train[98%:]"), 1000, 0, "x")
    assert len(a) == 980 and len(b) == 20 and set(a) | set(b) == set(range(1000)) and not set(a) & set(b)
    assert np.array_equal(b, select(parse_split("train[98%:]"), 1000, 0, "x"))  # deterministic
    assert not np.array_equal(b, select(parse_split("train[98%:]"), 1000, 1, "x"))  # the seed matters
    assert b.tolist() != list(range(980, 1000))  # shuffled: not the last 20 files of a sorted folder
    assert select(parse_split("train[10:20]"), 1000, None, "x").tolist() == list(range(10, 20))


@pytest.mark.parametrize("spec", ["train[::2]", "train[a:b]", "train[:101%]", "[:10]", "train[-5:]"])
def test_bad_split_specs(spec):
    with pytest.raises(DataError, match="bad split"):
        parse_split(spec)


def test_empty_selection_is_refused():
    with pytest.raises(DataError, match=r"'train\[20:10\]' selects no samples of toy"):
        select(parse_split("train[20:10]"), 100, 0, "toy")


# ---- inception crop geometry ---------------------------------------------------------------------
@pytest.mark.parametrize("height,width", [(375, 500), (28, 28), (500, 100)])
def test_crop_boxes_within_area_and_aspect(height, width):
    boxes = sample_crop_boxes(np.random.default_rng(0), 4000, height, width)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    fitted = (h * w >= 1)
    area, aspect = h * w / (height * width), w / h
    # Rounding to whole pixels moves area / aspect a little on tiny images; allow one pixel's worth.
    slack = 2.5 / min(height, width)
    assert (area >= 0.05 - slack).all() and (area <= 1.0).all()
    assert (aspect >= 3 / 4 * (1 - slack)).all() and (aspect <= 4 / 3 * (1 + slack)).all(), (aspect.min(), aspect.max())
    assert fitted.all()
    if height == width == 28:  # spread over the whole range, not stuck at one end
        assert area.min() < 0.1 and area.max() > 0.9


def test_crop_box_fallback_keeps_allowed_aspect():
    boxes = sample_crop_boxes(np.random.default_rng(0), 100, 20, 400, area=(0.9, 1.0))  # 20:1 strip never fits
    assert (boxes[:, 2] == 20).all() and np.allclose(boxes[:, 3] / boxes[:, 2], 4 / 3, atol=0.05)


def gradient_jpeg(tmp_path, size=(300, 200)):
    x = np.tile(np.linspace(0, 255, size[0]).astype(np.uint8), (size[1], 1))
    img = Image.fromarray(np.stack([x, 255 - x, np.full_like(x, 128)], -1))
    img.save(tmp_path / "g.jpg", quality=95)
    return tmp_path / "g.jpg"


def test_crop_resize_shapes_dtype_and_flip(tmp_path):
    path = gradient_jpeg(tmp_path)
    eval_t = CropResize(64, 3, inception_crop=False, flip=False)
    out = eval_t(Image.open(path), np.random.default_rng(0))
    assert out.shape == (3, 64, 64) and out.dtype == torch.uint8
    assert out[0, 32, 5] < 40 and out[0, 32, -5] > 215  # red rises left to right
    train_t = CropResize(64, 3, area=(1.0, 1.0), aspect=(1.5, 1.5))  # whole image: only flips vary
    flips = []
    for seed in range(20):
        x = train_t(Image.open(path), np.random.default_rng(seed))
        assert x.shape == (3, 64, 64)
        flips.append(bool(x[0, 32, 5] > x[0, 32, -5]))
        ref = eval_t(Image.open(path), np.random.default_rng(0))
        assert torch.allclose((x.flip(-1) if flips[-1] else x).float(), ref.float(), atol=6)
    assert 3 <= sum(flips) <= 17
    grey = CropResize(32, 1)(Image.open(path), np.random.default_rng(0))
    assert grey.shape == (1, 32, 32)


def test_jpeg_draft_decodes_at_reduced_scale(tmp_path):
    path = gradient_jpeg(tmp_path, (800, 800))
    img = Image.open(path)
    out = CropResize(100, 3, inception_crop=False, flip=False)(img, np.random.default_rng(0))
    assert img.size == (100, 100)  # libjpeg decoded at 1/8: the 800 px box still covers >= 100 px
    img = Image.open(path)
    CropResize(150, 3, inception_crop=False, flip=False)(img, np.random.default_rng(0))
    assert img.size == (200, 200)  # 1/4 scale: 1/8 would leave fewer than 150 px
    ref = torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((100, 100), Image.BILINEAR)))
    assert (out.permute(1, 2, 0).float() - ref.float()).abs().mean() < 3


def test_resize_crop_eval_keeps_centre(tmp_path):
    assert centre_box(300, 400, 0.5) == (75, 125, 150, 150)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    record = Preprocessing(image_size=2, resize_crop=True, crop_fraction=0.5, channels=1)
    assert torch.equal(record.geometry(x), x[..., 1:3, 1:3])


def test_crop_flip_batch_geometry():
    x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    whole = torch.tensor([[0, 0, 8, 8], [2, 4, 4, 4]])
    out = crop_flip_batch(x, whole, torch.tensor([True, False]), 8)
    assert torch.allclose(out[0], x[0].flip(-1))  # identity box + flip
    assert out[1].min() >= x[1, 0, 2:6, 4:8].min() and out[1].max() <= x[1, 0, 2:6, 4:8].max()
    assert torch.allclose(crop_flip_batch(x, whole, torch.tensor([False, False]), 4)[1], x[1, :, 2:6, 4:8])
    small = crop_flip_batch(x, torch.tensor([[0, 0, 8, 8]] * 2), torch.tensor([False, False]), 4)
    aa = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(small, aa, atol=1e-4)  # shrinking is antialiased, with the same filter as Pillow
    up = crop_flip_batch(x, torch.tensor([[2, 2, 4, 4]] * 2), torch.tensor([False, False]), 8)
    ref = torch.nn.functional.interpolate(x[..., 2:6, 2:6], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(up, ref, atol=1e-4)  # growing is plain bilinear of the crop


def test_normalize_ranges():
    x = torch.tensor([0, 127.5, 255]).view(1, 3, 1, 1)
    assert torch.allclose(Preprocessing().normalise(x).flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    mean_std = Preprocessing(normalisation="mean_std", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1))
    y = mean_std.normalise(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert torch.allclose(y.flatten(), torch.tensor([2.0, 1.0, 0.5]))


# ---- DeiT augmentation ---------------------------------------------------------------------------
def test_soft_targets_smoothing():
    t = augment.soft_targets(torch.tensor([2, 0]), 5, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2)) and t[0, 2] == pytest.approx(0.92) and t[0, 0] == pytest.approx(0.02)


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mix_targets_sum_to_one_and_match_pixels(mixup, cutmix):
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(6)])
    labels = torch.arange(6)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        out, t = augment.mix(x, augment.soft_targets(labels, 6, 0.1), rng, mixup_alpha=mixup, cutmix_alpha=cutmix)
        assert torch.allclose(t.sum(1), torch.ones(6))
        # Each image is a blend of itself and its mirror partner; the target weights say how much.
        own = t[torch.arange(6), labels] - 0.1 / 6
        partner = t[torch.arange(6), labels.flip(0)] - 0.1 / 6
        lam = own / (own + partner)
        expected = lam.view(-1, 1) * torch.arange(6.0).view(-1, 1) + (1 - lam.view(-1, 1)) * torch.arange(5.0, -1, -1).view(-1, 1)
        assert torch.allclose(out.mean((1, 2, 3)), expected.flatten(), atol=1e-4)


def test_mix_off_and_probability():
    x, t = torch.rand(4, 3, 8, 8), augment.soft_targets(torch.arange(4), 4)
    out, tt = augment.mix(x, t, np.random.default_rng(0), mixup_alpha=0.8, prob=0.0)
    assert out is x and tt is t


def test_random_erasing():
    x = torch.zeros(64, 3, 32, 32)
    out = augment.random_erase(x, np.random.default_rng(0), 0.5)
    erased = (out != 0).any(1).flatten(1).sum(1).float() / (32 * 32)
    hit = erased > 0
    assert 20 <= hit.sum() <= 44  # about half the images
    assert (erased[hit] >= 0.015).all() and (erased[hit] <= 0.34).all()
    assert torch.equal(augment.random_erase(x, np.random.default_rng(0), 0.0), x)


def test_the_training_loss_reads_the_loaders_soft_targets_as_their_labels():
    logits, labels = torch.randn(5, 7), torch.randint(0, 7, (5,))
    hard = classification_loss(logits, labels)
    assert torch.allclose(hard, classification_loss(logits, augment.soft_targets(labels, 7)))


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_every_op(channels):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (channels, 24, 24), dtype=np.uint8))
    for name, op in OPS.items():
        img = Image.fromarray(x.permute(1, 2, 0).numpy().squeeze(-1) if channels == 1 else x.permute(1, 2, 0).numpy())
        out = op(img, 0.9, rng)
        assert out.size == (24, 24) and out.mode == img.mode, name
    ra = RandAugment(n=3, m=9)
    outs = [ra(x, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == x.shape and o.dtype == torch.uint8 for o in outs)
    assert sum(not torch.equal(o, x) for o in outs) >= 5
    assert torch.equal(ra(x, np.random.default_rng(3)), outs[3])  # seeded


def noisy_jpeg_bytes(size=(120, 90), **save) -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def test_jpeg_top_rows_decodes_exactly_the_top():
    from vitlab.data.images import jpeg_top_rows

    data = noisy_jpeg_bytes()
    full = np.array(Image.open(io.BytesIO(data)))
    for rows in (1, 37, 89):
        part = Image.open(io.BytesIO(jpeg_top_rows(data, rows)))
        assert part.size == (120, rows) and np.array_equal(np.array(part), full[:rows])
    assert jpeg_top_rows(data, 90) is None  # nothing to save
    assert jpeg_top_rows(data[: len(data) // 2], 10) is None  # truncated: left to the full decode, which fails
    assert jpeg_top_rows(noisy_jpeg_bytes(progressive=True), 10) is None
    assert jpeg_top_rows(b"\xff\xd8garbage\xff\xd9", 10) is None


def test_crop_resize_partial_decode_matches_full_decode():
    from vitlab.data.images import decode_box

    data = noisy_jpeg_bytes((300, 200))
    for box in [(10, 20, 150, 90), (0, 0, 300, 199), (100, 150, 300, 200)]:
        lazy = Image.open(io.BytesIO(data))
        got = np.array(decode_box(lazy, box, 3, (1000, 1000)))  # large target: no DCT scaling
        full = Image.open(io.BytesIO(data))
        full.draft("RGB", full.size)
        full.decoderconfig = (1, 1)  # the same fast-DCT decode, all rows
        assert np.array_equal(got, np.array(full.crop(box).convert("RGB"))), box


def test_truncated_jpeg_is_always_bad(tmp_path):
    from vitlab.data.errors import BadImage

    data = noisy_jpeg_bytes((300, 200))[:-2000]
    t = CropResize(32, 3)
    for seed in range(10):  # whatever the crop, even one above the missing rows
        with pytest.raises(BadImage, match="truncated"):
            t(Image.open(io.BytesIO(data)), np.random.default_rng(seed), "t.jpg")
