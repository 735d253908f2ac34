"""One image decoder: `eval` (a folder data set through EvalBatches, and the loader's lazy EvalImage), `predict`,
`inspect` and `serve` feed the model the same tensor for a rotated-EXIF JPEG, a 16-bit PNG and an RGBA PNG, and
that tensor is the right picture (orientation applied, 16 bits scaled to 8, transparency over white)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny
from eval_fixtures import one_thread  # noqa: F401  (autouse)
from vitlab import create_model, load_pretrained, save_pretrained
from vitlab.data import build_dataset
from vitlab.data.preprocessing import EvalImage, of_model
from vitlab.evaluation.batches import EvalBatches
from vitlab.evaluation.predict import predict_files
from vitlab.inspection import dataset_batches, load_image_files, normalise
from vitlab.serving.engine import TorchEngine
from vitlab.serving.images import ImageLimits, decode_image

HEIGHT, WIDTH = 16, 24  # the model's input size: the decoded images already have it, so no resize blurs a difference
ORIENTATION = 0x0112


def rotated_jpeg(path):
    """Stored 16 wide x 24 high; EXIF orientation 6 says: turn 90 degrees clockwise to show it 24 x 16."""
    stored = np.random.default_rng(0).integers(0, 256, (WIDTH, HEIGHT, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(stored).save(path, "JPEG", quality=95, exif=exif.tobytes())
    with Image.open(path) as img:  # the stored pixels as libjpeg decodes them, orientation ignored
        pixels = np.asarray(img.convert("RGB"))
    return np.rot90(pixels, k=-1)  # clockwise


def sixteen_bit_png(path):
    values = np.random.default_rng(1).integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    values[0, :4] = [0, 255, 256, 65535]
    Image.fromarray(values).save(path, "PNG")
    with Image.open(path) as img:
        assert img.mode == "I;16" and np.asarray(img).max() > 255
    return np.repeat((values >> 8).astype(np.uint8)[:, :, None], 3, axis=2)


def rgba_png(path):
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    rgba[..., 3] = rng.choice([0, 128, 255], (HEIGHT, WIDTH))
    Image.fromarray(rgba).save(path, "PNG")
    alpha = rgba[..., 3:].astype(np.float64) / 255
    return rgba[..., :3] * alpha + 255 * (1 - alpha), rgba[..., 3]  # over white, before rounding


@pytest.fixture
def tricky(tmp_path):
    """Three files in a one-class image folder (split "test") and what each should look like, (H, W, 3)."""
    folder = tmp_path / "data" / "test" / "things"
    folder.mkdir(parents=True)
    paths = [folder / "a_rotated.jpg", folder / "b_sixteen.png", folder / "c_alpha.png"]
    composited, alpha = rgba_png(paths[2])
    return paths, [rotated_jpeg(paths[0]), sixteen_bit_png(paths[1]), composited], alpha


@pytest.fixture
def model(tmp_path):
    saved = save_pretrained(create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=(HEIGHT, WIDTH))),
                            tmp_path / "ckpt", label_names=["thing"] * 5)
    return load_pretrained(saved).eval(), saved


def predicted_inputs(model, paths):
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        results = predict_files(model, paths, topk=1, batch_size=len(paths))
    finally:
        hook.remove()
    assert all("predictions" in r for r in results), results
    return torch.cat(seen)


def test_eval_predict_inspect_and_serve_see_the_same_tensor(tricky, model, tmp_path):
    paths, expected, alpha = tricky
    model, saved = model
    record = of_model(model)
    dataset = build_dataset(f"folder:{tmp_path / 'data'}", "test")
    assert dataset.files == [str(p) for p in paths]
    evaluated = torch.cat([x for x, _, _ in EvalBatches(dataset, preprocessing=record, batch_size=2)])
    loader = torch.stack([record.normalise(EvalImage(record)(dataset.open(i))) for i in range(len(paths))])
    predicted = predicted_inputs(model, paths)
    inspected = normalise(load_image_files(paths, model), model)
    inspected_data = normalise(next(dataset_batches(dataset, model, 3, 3))[0], model)
    engine = TorchEngine(saved, device="cpu", precision="fp32")
    served = torch.stack([engine.prepare(decode_image(p.read_bytes(), p.name, engine.in_chans, ImageLimits()))
                          for p in paths])
    assert evaluated.shape == (3, 3, HEIGHT, WIDTH)
    for name, x in [("loader", loader), ("predict", predicted), ("inspect files", inspected),
                    ("inspect data set", inspected_data), ("serve", served)]:
        for i, path in enumerate(paths):
            assert torch.equal(x[i], evaluated[i]), f"{name} and eval differ on {path.name}"
    pixels = ((evaluated + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()  # x / 127.5 - 1, undone
    np.testing.assert_array_equal(pixels[0], expected[0], err_msg="EXIF orientation")
    np.testing.assert_array_equal(pixels[1], expected[1], err_msg="16-bit PNG")
    opaque_or_clear = alpha != 128
    np.testing.assert_array_equal(pixels[2][opaque_or_clear], expected[2][opaque_or_clear], err_msg="alpha")
    assert np.abs(pixels[2] - expected[2]).max() <= 1  # half-transparent: within Pillow's rounding


def test_serve_decodes_uploaded_bytes_as_the_data_layer_does(tricky):
    from vitlab.data.images import decode

    paths, _, _ = tricky
    for in_chans in (1, 3):
        for path in paths:
            served = decode_image(path.read_bytes(), path.name, in_chans, ImageLimits())
            assert torch.equal(served, decode(io.BytesIO(path.read_bytes()), path.name, in_chans, 10**8))


def test_training_crops_an_exif_rotated_photo_as_shown(tricky, tmp_path):
    from vitlab.data.images import decode
    from vitlab.data.transforms import CropResize, resize_uint8

    dataset = build_dataset(f"folder:{tmp_path / 'data'}", "test")
    whole = CropResize(24, 3, inception_crop=False, flip=False)(dataset.open(0), np.random.default_rng(0))
    shown = decode(dataset.files[0], dataset.files[0], 3, 10**8)
    assert shown.shape == (3, HEIGHT, WIDTH)
    assert torch.equal(whole, resize_uint8(shown[None], 24)[0])


def test_inspect_feeds_a_resized_image_as_predict_does(model, tmp_path):
    """Resized pixels are not rounded back to uint8 before the model sees them (they are drawn as they are)."""
    model, _ = model
    path = tmp_path / "larger.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(path)
    assert torch.equal(normalise(load_image_files([path], model), model), predicted_inputs(model, [path]))
