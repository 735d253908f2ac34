"""The preprocessing record (issue 13 §1): one record saved with every checkpoint, produced for every format with
its known defaults, and the one evaluation transform built from it by training and every command."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import training_support as ts
from conftest import tiny
from test_checkpoints import save_npz, to_big_vision
from reference_vit import random_official_params
from vitlab import create_model, load_pretrained, save_pretrained
from vitlab.checkpoints.hf import save_hf
from vitlab.checkpoints.npz_official import save_official_npz
from vitlab.checkpoints.timm import IMAGENET_MEAN, IMAGENET_STD, save_timm
from vitlab.cli import main
from vitlab.data import DataConfig, DataError, build_dataset, build_loader
from vitlab.data.preprocessing import Preprocessing, eval_transform, of_model
from vitlab.evaluation import EvalBatches
from vitlab.evaluation.predict import predict_files
from vitlab.inspection import load_image_files
from vitlab.training import from_dict, train
from vitlab.training.config import validate


def small_model(**overrides):
    return create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=16, **overrides))


def record_of(model) -> Preprocessing:
    assert isinstance(model.preprocessing, Preprocessing)  # typed from the reader on
    return model.preprocessing


# ---- the record and its transform -------------------------------------------------------------------------
def test_the_record_round_trips_and_reads_older_spellings():
    record = Preprocessing(image_size=(32, 48), resize_crop=True, crop_fraction=0.9, interpolation="bicubic",
                           normalisation="mean_std", mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), channels=3,
                           label_names=("a", "b"))
    assert Preprocessing.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    old = Preprocessing.from_dict({"normalization": "mean_std", "mean": [0.5, 0.4, 0.3], "std": [0.2] * 3},
                                  image_size=64)
    assert old.normalisation == "mean_std" and old.image_size == (64, 64) and not old.resize_crop
    assert Preprocessing.from_dict(None) == Preprocessing()  # the paper's: resize, x / 127.5 - 1
    with pytest.raises(DataError, match="interpolation 'nearest'"):
        Preprocessing(interpolation="nearest")


def test_the_record_owns_normalise_its_inverse_and_the_way_to_another_record():
    """denormalise undoes normalise; renormalise maps one record's inputs to another's (a grey model's record may
    list three equal values) as normalising the pixels that way would."""
    pixels = torch.randint(0, 256, (2, 3, 4, 4)).float()
    imagenet = Preprocessing(normalisation="mean_std", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    plain = Preprocessing()
    for record in (plain, imagenet):
        assert torch.allclose(record.denormalise(record.normalise(pixels)), pixels, atol=1e-3)
    assert torch.allclose(plain.renormalise(plain.normalise(pixels), imagenet), imagenet.normalise(pixels), atol=1e-5)
    assert plain.renormalise(pixels, Preprocessing()) is pixels  # the same normalisation: untouched
    grey = Preprocessing(normalisation="mean_std", mean=(0.25,) * 3, std=(0.5,) * 3, channels=1)
    one = pixels[:, :1]
    assert torch.allclose(plain.renormalise(plain.normalise(one), grey), grey.normalise(one), atol=1e-5)
    assert torch.allclose(grey.denormalise(grey.normalise(one)), one, atol=1e-3)  # one channel's mean, not three


def test_eval_transform_crops_the_centre_then_resizes_then_normalises():
    image = torch.arange(64, dtype=torch.uint8).view(1, 8, 8) * 3
    record = Preprocessing(image_size=4, resize_crop=True, crop_fraction=0.5, channels=1)
    assert torch.equal(eval_transform(record)(image), image[:, 2:6, 2:6].float() / 127.5 - 1)
    spread = Preprocessing(image_size=16, interpolation="bicubic", channels=1).geometry(
        torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8))
    assert spread.min() >= 0 and spread.max() <= 255  # cubic overshoot clipped, as Pillow does
    mean_std = Preprocessing(image_size=1, normalisation="mean_std", mean=(0.5, 0.25, 0), std=(0.5, 0.25, 1))
    assert mean_std.normalise(torch.full((3, 1, 1), 255)).flatten().tolist() == [1.0, 3.0, 1.0]


# ---- every format gets its record -----------------------------------------------------------------------------
def test_official_and_big_vision_npz_records_are_resize_and_minus_one_one(tmp_path):
    official = load_pretrained(save_official_npz(small_model(), tmp_path / "official.npz"))
    big_vision = load_pretrained(save_npz(tmp_path / "bv.npz", to_big_vision(random_official_params(), False)))
    for model, size in ((official, (16, 16)), (big_vision, (32, 32))):
        record = record_of(model)
        assert record == Preprocessing(image_size=size, channels=3)  # x / 127.5 - 1 on a plain bilinear resize


def test_timm_record_without_and_with_its_config_json(tmp_path):
    bare = load_pretrained(save_timm(small_model(), tmp_path / "bare" / "model.safetensors"), num_heads=2)
    assert record_of(bare) == Preprocessing(image_size=16, resize_crop=True, crop_fraction=0.875,
                                            interpolation="bicubic", normalisation="mean_std", mean=IMAGENET_MEAN,
                                            std=IMAGENET_STD)
    folder = tmp_path / "hub"
    save_timm(small_model(), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 5, "label_names": list("abcde"),
        "pretrained_cfg": {"input_size": [3, 16, 16], "interpolation": "bilinear", "crop_pct": 0.9,
                           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    for path in (folder, folder / "model.safetensors"):
        model = load_pretrained(path, num_heads=2)
        assert record_of(model) == Preprocessing(image_size=16, resize_crop=True, crop_fraction=0.9,
                                                 label_names=tuple("abcde"))
        assert model.label_names == list("abcde")


def test_hf_record_from_preprocessor_config_or_vit_defaults(tmp_path):
    folder = save_hf(small_model(), tmp_path / "hf")
    (folder / "preprocessor_config.json").unlink()
    assert record_of(load_pretrained(folder)) == Preprocessing(image_size=16)  # ViTImageProcessor's defaults
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "ConvNextImageProcessor", "do_resize": True, "size": {"shortest_edge": 16},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 14, "width": 14}, "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}))
    assert record_of(load_pretrained(folder)) == Preprocessing(
        image_size=16, resize_crop=True, crop_fraction=14 / 16, interpolation="bicubic", normalisation="mean_std",
        mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_vitlab_record_is_what_was_saved_and_follows_a_new_resolution(tmp_path):
    record = Preprocessing(image_size=16, resize_crop=True, crop_fraction=0.5, normalisation="mean_std",
                           mean=(0.3,) * 3, std=(0.2,) * 3, label_names=tuple("abcde"))
    path = save_pretrained(small_model(), tmp_path / "v", preprocessing=record.to_dict())
    assert record_of(load_pretrained(path)) == record
    assert of_model(load_pretrained(path, image_size=32)) == record.replace(image_size=(32, 32))
    legacy = json.loads((path / "config.json").read_text())  # a checkpoint of an older vitlab
    legacy["preprocessing"] = {"normalisation": "minus_one_one"}
    (path / "config.json").write_text(json.dumps(legacy))
    assert record_of(load_pretrained(path)) == Preprocessing(image_size=16)


# ---- training-time evaluation and the commands agree ----------------------------------------------------------
def test_the_loader_and_the_commands_build_the_same_eval_input(tmp_path):
    data = DataConfig(dataset=f"folder:{ts.image_folder(ts.DATA_ROOT)}", image_size=12, in_chans=3, batch_size=64,
                      resize_crop=True, crop_fraction=0.7, normalisation="mean_std", mean=(0.4, 0.5, 0.6),
                      std=(0.2, 0.3, 0.4))
    from vitlab.data.preprocessing import from_data_config

    loader = build_loader(data, "test", train=False)
    from_loader = torch.cat([x for x, _ in loader])
    dataset = build_dataset(data.dataset, "test", in_chans=3)
    from_commands = torch.cat([x for x, _, _ in EvalBatches(dataset, preprocessing=from_data_config(data))])
    assert torch.equal(from_loader, from_commands)
    arrays = ts_arrays()  # the in-memory path (Fashion-MNIST, CIFAR) too
    in_memory = DataConfig(image_size=10, in_chans=1, batch_size=16, resize_crop=True, crop_fraction=0.6)
    batched = torch.cat([x for x, _ in build_loader(in_memory, "test", train=False, dataset=arrays)])
    per_image = torch.cat([x for x, _, _ in EvalBatches(arrays, preprocessing=from_data_config(in_memory))])
    assert torch.equal(batched, per_image)


def ts_arrays():
    from vitlab.data.arrays import ArrayDataset

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 14, 14), generator=g, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(40) % 4, list("abcd"), in_chans=1, name="toy")


def test_training_accuracy_equals_vitlab_eval_with_resize_crop(tmp_path, capsys):
    raw = ts.tiny_config(tmp_path / "run", train={"steps": 10, "checkpoint_every": 10},
                         data={"resize_crop": True, "crop_fraction": 0.75})
    result = train(validate(from_dict(raw)))
    saved = json.loads((tmp_path / "run/checkpoints/step-00000010/config.json").read_text())["preprocessing"]
    assert saved["resize_crop"] and saved["crop_fraction"] == 0.75 and saved["label_names"] == list("abcd")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", raw["data"]["dataset"], "--split", "test",
                 "--batch-size", "16", "--num-workers", "0", "--device", "cpu", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_samples"] == 64 and metrics["top1"] == result.last_metric


def test_predict_and_inspect_use_the_record(tmp_path):
    record = Preprocessing(image_size=16, resize_crop=True, crop_fraction=0.5, normalisation="mean_std",
                           mean=(0.2, 0.4, 0.6), std=(0.3, 0.3, 0.3))
    source = small_model()
    torch.nn.init.normal_(source.head.weight, std=0.5)  # classes that differ
    path = save_pretrained(source, tmp_path / "v", preprocessing=record.to_dict())
    model = load_pretrained(path).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    with torch.no_grad():
        expected = model(eval_transform(record)(image)[None]).softmax(-1)[0]
    top = predict_files(model, [tmp_path / "x.png"], topk=1)[0]["predictions"][0]
    assert top["index"] == int(expected.argmax()) and top["probability"] == pytest.approx(float(expected.max()))
    shown = load_image_files([tmp_path / "x.png"], model)[0]  # the centre 20 x 20, resized to 16
    assert torch.equal(shown, record.geometry(image))  # not rounded: the model sees what predict gives it
