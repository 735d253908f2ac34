"""Loading at another resolution (position-embedding resampling) and with another head; and every refusal."""

import numpy as np
import pytest
import scipy.ndimage
import torch
from safetensors.torch import save_file

import vitlab
from vitlab.checkpoints import CheckpointError, export_checkpoint, load_pretrained
from vitlab.models.posemb import resample_posemb

from conftest import tiny
from reference_vit import random_official_params


@pytest.fixture
def npz(tmp_path):
    def write(**kw):
        path = tmp_path / "vit.npz"
        np.savez(path, **random_official_params(**kw))
        return path
    return write


# ---- resampling ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("old,new", [((4, 4), (6, 6)), ((7, 7), (12, 12)), ((7, 7), (7, 12)), ((6, 6), (3, 5))])
def test_official_resampling_equals_scipy_zoom_order_1(tmp_path, old, new):
    params = random_official_params(grid=old, seed=3)
    path = tmp_path / "vit.npz"
    np.savez(path, **params)
    model = load_pretrained(path, image_size=(new[0] * 8, new[1] * 8))
    posemb = params["Transformer/posembed_input/pos_embedding"].astype(np.float64)
    grid = posemb[0, 1:].reshape(*old, -1)
    expected = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    ours = model.pos_embed.detach().double().numpy()
    np.testing.assert_allclose(ours[0, 1:].reshape(*new, -1), expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ours[0, 0], posemb[0, 0])  # the class row is kept apart, unchanged
    assert model.config.image_hw == (new[0] * 8, new[1] * 8)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, new[0] * 8, new[1] * 8)).shape == (1, 5)


def test_bicubic_resampling_is_an_option(npz):
    path = npz(grid=(4, 4))
    official = load_pretrained(path, image_size=48)
    bicubic = load_pretrained(path, image_size=48, posemb_method="bicubic")
    source = load_pretrained(path).pos_embed.detach()
    torch.testing.assert_close(bicubic.pos_embed.detach(), resample_posemb(source, (4, 4), (6, 6), 1, "bicubic"))
    assert not torch.allclose(bicubic.pos_embed, official.pos_embed)


def test_dynamic_image_size_accepts_other_inputs(npz):
    model = load_pretrained(npz(), dynamic_image_size=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 64)).shape == (1, 5)


# ---- a new head ----------------------------------------------------------------------------------------------
def test_new_head_is_zero_initialised_and_pre_logits_dropped(npz):
    path = npz(representation=24)
    model = load_pretrained(path, num_classes=7)
    assert model.pre_logits is None and model.config.representation_size is None
    assert model.head.weight.shape == (7, 32) and not model.head.weight.any() and not model.head.bias.any()
    kept = load_pretrained(path, num_classes=7, keep_pre_logits=True)
    assert kept.pre_logits is not None and kept.head.weight.shape == (7, 24) and not kept.head.weight.any()
    same = load_pretrained(path, num_classes=5)
    assert same.pre_logits is not None and same.head.weight.any()  # the checkpoint's own head, kept


def test_headless_checkpoint_gets_a_head(tmp_path):
    params = random_official_params()
    del params["head/kernel"], params["head/bias"]
    np.savez(tmp_path / "vit.npz", **params)
    assert load_pretrained(tmp_path / "vit.npz").config.num_classes == 0
    assert load_pretrained(tmp_path / "vit.npz", num_classes=3).head.weight.shape == (3, 32)


# ---- refusals ------------------------------------------------------------------------------------------------
class NotATensor:
    pass


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
    torch.save({"state_dict": model.state_dict(), "args": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="needs Python code to be unpickled.*refuses"):
        load_pretrained(path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "vit.npz"
    np.savez(path, **random_official_params(), meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="pickled Python objects; refusing"):
        load_pretrained(path)


@pytest.mark.parametrize("write,message", [
    (lambda p: p.write_text("hello"), "not a checkpoint vitlab recognises"),
    (lambda p: np.savez(p, weights=np.zeros(3)), "not a ViT checkpoint"),
    (lambda p: save_file({"conv.weight": torch.zeros(2, 2)}, str(p)), "not a timm ViT state dict"),
    (lambda p: torch.save({"fc.weight": torch.zeros(2)}, p), "not a timm ViT state dict"),
])
def test_not_a_vit_is_refused(tmp_path, write, message):
    path = tmp_path / "file"
    write(path)
    path = next(tmp_path.iterdir())  # np.savez may have appended .npz
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(path)


@pytest.mark.parametrize("fmt", ["npz", "timm", "vitlab", "hf"])
def test_truncated_file_is_refused(tmp_path, fmt):
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, width=48, num_heads=3))
    path = export_checkpoint(model, tmp_path / fmt, fmt)
    file = path / "model.safetensors" if path.is_dir() else path
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_pretrained(path, num_heads=3)


def test_missing_key_names_file_key_and_shape(npz):
    path = npz()
    arrays = dict(np.load(path))
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"vit\.npz.*missing keys: 'Transformer/encoderblock_1/MlpBlock_3/"
                                              r"Dense_0/bias' \(expected shape \(64,\)\).*nothing was loaded"):
        load_pretrained(path)


def test_unexpected_key_is_named(npz):
    path = npz()
    arrays = dict(np.load(path), **{"Transformer/encoderblock_0/LayerScale/gamma": np.ones(32, np.float32)})
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"unexpected keys: 'Transformer/encoderblock_0/LayerScale/gamma' \(32,\)"):
        load_pretrained(path)


def test_shape_mismatch_names_both_shapes(npz):
    path = npz()
    arrays = dict(np.load(path))
    arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/bias"] = np.zeros(31, np.float32)
    np.savez(path, **arrays)
    with pytest.raises(CheckpointError, match=r"'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/out/bias'"
                                              r" has shape \(31,\) in the file, the model needs \(32,\)"):
        load_pretrained(path)


def test_timm_features_outside_the_paper_are_named(tmp_path):
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, width=192, num_heads=3))
    state_dict = dict(model.state_dict(), **{"norm_pre.weight": torch.ones(192), "blocks.0.attn.q_norm.weight": torch.ones(64)})
    save_file(state_dict, str(tmp_path / "m.safetensors"))
    with pytest.raises(CheckpointError, match="norm_pre.*query/key normalisation is not part"):
        load_pretrained(tmp_path / "m.safetensors")


def test_hf_export_refuses_what_transformers_cannot_hold(tmp_path):
    for overrides in (dict(classifier="gap"), dict(resnet_layers=(1,), patch_size=1), dict(representation_size=8)):
        model = vitlab.create_model("ViT-Ti/16", **tiny(**{"patch_size": 8, **overrides}))
        with pytest.raises(CheckpointError, match="cannot export to Hugging Face"):
            export_checkpoint(model, tmp_path / "hf", "hf")


def test_convert_command_reports_errors(tmp_path, capsys):
    from vitlab.cli import main
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 64)
    assert main(["convert", str(tmp_path / "junk.bin"), str(tmp_path / "out"), "--to", "npz"]) == 2
    assert "not a checkpoint vitlab recognises" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: an unknown --to exits with the usage message
        main(["convert", "a", "b", "--to", "tflite"])


def test_a_training_run_directory_loads_its_newest_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    models = {}
    for step in (10, 20):
        models[step] = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
        vitlab.save_pretrained(models[step], run / "checkpoints" / f"step-{step:08d}")
    (run / "checkpoints" / "step-00000030.partial").mkdir()  # a save that was cut off
    loaded = vitlab.load_pretrained(run)
    for key, value in models[20].state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
