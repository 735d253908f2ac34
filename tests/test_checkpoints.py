"""Checkpoints in every format, built from random weights here, loaded, and compared with the code that wrote them.

- official / big_vision .npz: written with np.savez from the documented names and shapes; compared with an
  independent float64 numpy forward pass of the official computation (tests/reference_vit.py), <= 1e-4.
- timm: a state dict with timm's names, compared with the same reference in timm's flavour, <= 1e-5.
- Hugging Face: written by transformers itself (save_pretrained of random models), compared with
  transformers' logits, <= 1e-5; our export is loaded by transformers' from_pretrained, <= 1e-5.
- round trips vitlab -> {vitlab, hf, timm, npz} -> vitlab are exact.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vitlab
from vitlab.checkpoints import detect_format, export_checkpoint, load_pretrained
from vitlab.cli import main as cli
from vitlab.data.preprocessing import of_model

from conftest import tiny
from reference_vit import forward as reference_forward
from reference_vit import random_official_params

OFFICIAL_CASES = {
    "token": dict(),
    "gap": dict(token=False),
    "pre_logits": dict(representation=24),
    "non_square_grid": dict(grid=(3, 5)),
    "hybrid": dict(hybrid_layers=(1, 2), patch=1, grid=(2, 2), legacy_gn_shape=True),
}


def images(h, w, n=2, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, h, w)).astype(np.float32)


def input_hw(case: dict) -> tuple[int, int]:
    gh, gw = case.get("grid", (4, 4))
    stride = case.get("patch", 8) * (4 * 2 ** (len(case["hybrid_layers"]) - 1) if "hybrid_layers" in case else 1)
    return gh * stride, gw * stride


def our_logits(model, x):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x)).double().numpy()


def save_npz(path, arrays):
    np.savez(path, **arrays)
    return path


# ---- official .npz ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OFFICIAL_CASES)
def test_official_npz_reproduces_the_official_computation(tmp_path, name):
    case = OFFICIAL_CASES[name]
    params = random_official_params(**case)
    path = save_npz(tmp_path / "vit.npz", params)
    h, w = input_hw(case)
    if h != w:  # a non-square grid: the caller says which resolution it was trained at
        with pytest.raises(ValueError, match="not a square grid"):
            load_pretrained(path)
    model = load_pretrained(path, image_size=(h, w))
    cfg = model.config
    assert (cfg.gelu, cfg.layer_norm_eps, cfg.ws_eps, cfg.num_heads) == ("tanh", 1e-6, 1e-5, 4)
    assert cfg.classifier == ("gap" if name == "gap" else "token")
    x = images(h, w)
    diff = np.abs(our_logits(model, x) - reference_forward(params, x)).max()
    assert diff <= 1e-4, diff


def test_head_count_is_read_from_the_attention_kernels(tmp_path):
    path = save_npz(tmp_path / "vit.npz", random_official_params(width=48, heads=3))
    assert load_pretrained(path).config.num_heads == 3


def test_official_training_checkpoint_prefix_is_understood(tmp_path):
    params = random_official_params()
    arrays = {f"opt/target/{k}": v for k, v in params.items()}
    arrays["opt/state/step"] = np.array(7)
    model = load_pretrained(save_npz(tmp_path / "ckpt.npz", arrays))
    x = images(32, 32)
    assert np.abs(our_logits(model, x) - reference_forward(params, x)).max() <= 1e-4


# ---- big_vision .npz -------------------------------------------------------------------------------------------
def to_big_vision(params: dict, scan: bool) -> dict:
    """The official names renamed to big_vision's (module numbering, posemb without the class row)."""
    out = {}
    renames = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
               "MlpBlock_3": "MlpBlock_0"}
    blocks = {}
    for key, value in params.items():
        if key == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = value[:, 1:] if "cls" in params else value
        elif key.startswith("Transformer/encoderblock_"):
            _, block, module, rest = key.split("/", 3)
            key = f"{renames.get(module, module)}/{rest}"
            blocks.setdefault(key, []).append(value)
            if not scan:
                out[f"params/Transformer/{block}/{key}"] = value
        else:
            out["params/" + key] = value
    if scan:
        out.update({f"params/Transformer/encoderblock/{k}": np.stack(v) for k, v in blocks.items()})
    return out


@pytest.mark.parametrize("scan", [False, True], ids=["unscanned", "scanned"])
def test_big_vision_npz_matches_its_computation(tmp_path, scan):
    params = random_official_params(depth=3)
    bv = to_big_vision(params, scan)
    bv["opt/mu/head/kernel"] = np.zeros(3, np.float32)  # optimiser state beside the params is ignored
    model = load_pretrained(save_npz(tmp_path / "bv.npz", bv))
    assert model.config.depth == 3
    reference_params = dict(params)
    reference_params["Transformer/posembed_input/pos_embedding"] = params["Transformer/posembed_input/pos_embedding"][:, 1:]
    x = images(32, 32)
    expected = reference_forward(reference_params, x, cls_posemb=False)
    assert np.abs(our_logits(model, x) - expected).max() <= 1e-4


# ---- timm state dicts ------------------------------------------------------------------------------------------
def to_timm(p: dict) -> dict:
    """Official-layout arrays as timm names its tensors (vision_transformer.py, vision_transformer_hybrid.py and
    resnetv2.py: patch_embed.backbone.stem.conv, stages.S.blocks.U.{conv,norm}N, downsample.{conv,norm})."""
    t = {}
    T = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    conv = lambda k: T(k.transpose(3, 2, 0, 1))  # noqa: E731
    flat = lambda a: T(a.reshape(-1))  # noqa: E731
    t["patch_embed.proj.weight"], t["patch_embed.proj.bias"] = conv(p["embedding/kernel"]), T(p["embedding/bias"])
    t["pos_embed"] = T(p["Transformer/posembed_input/pos_embedding"])
    if "cls" in p:
        t["cls_token"] = T(p["cls"])
    if "conv_root/kernel" in p:
        bb = "patch_embed.backbone."
        t[bb + "stem.conv.weight"] = conv(p["conv_root/kernel"])
        t[bb + "stem.norm.weight"], t[bb + "stem.norm.bias"] = flat(p["gn_root/scale"]), flat(p["gn_root/bias"])
        for key in p:
            if key.startswith("block") and key.endswith("/kernel"):
                block, unit, layer, _ = key.split("/")
                s, u = int(block[5:]) - 1, int(unit[4:]) - 1
                base = f"{bb}stages.{s}.blocks.{u}."
                if layer == "conv_proj":
                    conv_name, norm_name, gn = "downsample.conv", "downsample.norm", "gn_proj"
                else:
                    conv_name, norm_name, gn = layer, "norm" + layer[-1], "gn" + layer[-1]
                t[base + conv_name + ".weight"] = conv(p[key])
                t[base + norm_name + ".weight"] = flat(p[f"{block}/{unit}/{gn}/scale"])
                t[base + norm_name + ".bias"] = flat(p[f"{block}/{unit}/{gn}/bias"])
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        b, o = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        a = b + "MultiHeadDotProductAttention_1/"
        d = p[a + "query/kernel"].shape[0]
        t[o + "attn.qkv.weight"] = T(np.concatenate([p[a + n + "/kernel"].reshape(d, d).T for n in ("query", "key", "value")]))
        t[o + "attn.qkv.bias"] = T(np.concatenate([p[a + n + "/bias"].reshape(-1) for n in ("query", "key", "value")]))
        t[o + "attn.proj.weight"] = T(p[a + "out/kernel"].reshape(d, d).T)
        t[o + "attn.proj.bias"] = T(p[a + "out/bias"])
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            t[o + ours + ".weight"], t[o + ours + ".bias"] = T(p[b + theirs + "/scale"]), T(p[b + theirs + "/bias"])
        for n in (0, 1):
            t[o + f"mlp.fc{n + 1}.weight"] = T(p[b + f"MlpBlock_3/Dense_{n}/kernel"].T)
            t[o + f"mlp.fc{n + 1}.bias"] = T(p[b + f"MlpBlock_3/Dense_{n}/bias"])
        i += 1
    t["norm.weight"], t["norm.bias"] = T(p["Transformer/encoder_norm/scale"]), T(p["Transformer/encoder_norm/bias"])
    if "pre_logits/kernel" in p:
        t["pre_logits.fc.weight"], t["pre_logits.fc.bias"] = T(p["pre_logits/kernel"].T), T(p["pre_logits/bias"])
    t["head.weight"], t["head.bias"] = T(p["head/kernel"].T), T(p["head/bias"])
    return t


TIMM_CASES = {k: OFFICIAL_CASES[k] for k in ("token", "gap", "pre_logits", "hybrid")}


@pytest.mark.parametrize("name", TIMM_CASES)
@pytest.mark.parametrize("container", ["safetensors", "pth"])
def test_timm_state_dict_matches_timms_computation(tmp_path, name, container):
    case = TIMM_CASES[name]
    params = random_official_params(width=192, heads=3, mlp_dim=64, **case)
    state_dict = to_timm(params)
    if container == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state_dict, str(path))
    else:
        path = tmp_path / "pytorch_model.bin"
        torch.save({"state_dict": state_dict, "epoch": 3}, path)
    assert detect_format(path) == "timm"
    model = load_pretrained(path)
    cfg = model.config
    assert (cfg.gelu, cfg.num_heads) == ("exact", 3)  # heads from the width table (192 -> 3)
    if name == "hybrid":
        assert (cfg.ws_eps, cfg.gn_eps) == (1e-8, 1e-5)
    h, w = input_hw(case)
    x = images(h, w)
    diff = np.abs(our_logits(model, x) - reference_forward(params, x, flavour="timm")).max()
    assert diff <= 1e-5, diff


def test_timm_heads_come_from_the_caller_first(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(to_timm(random_official_params(width=192, heads=3)), str(path))
    assert load_pretrained(path, num_heads=6).config.num_heads == 6
    odd = tmp_path / "odd.safetensors"
    save_file(to_timm(random_official_params(width=40, heads=5)), str(odd))
    with pytest.raises(ValueError, match="pass num_heads="):
        load_pretrained(odd)
    assert load_pretrained(odd, num_heads=5).config.num_heads == 5


def test_timm_position_embedding_without_class_row(tmp_path):
    params = random_official_params(width=192, heads=3)
    state_dict = to_timm(params)
    state_dict["pos_embed"] = state_dict["pos_embed"][:, 1:].clone()  # timm's no_embed_class=True
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))
    reference_params = dict(params)
    reference_params["Transformer/posembed_input/pos_embedding"] = params["Transformer/posembed_input/pos_embedding"][:, 1:]
    x = images(32, 32)
    expected = reference_forward(reference_params, x, flavour="timm", cls_posemb=False)
    assert np.abs(our_logits(load_pretrained(path), x) - expected).max() <= 1e-5


# ---- Hugging Face ----------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")


def random_hf(cls, hidden_act="gelu", **kw):
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
                                    image_size=32, patch_size=8, hidden_act=hidden_act, **kw)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_pytorch_tanh"])
def test_hf_image_classifier_folder_gives_transformers_logits(tmp_path, hidden_act):
    hf = random_hf(transformers.ViTForImageClassification, hidden_act, num_labels=4,
                   id2label={0: "cat", 1: "dog", 2: "emu", 3: "yak"})
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    assert model.label_names == ["cat", "dog", "emu", "yak"]
    x = torch.from_numpy(images(32, 32))
    with torch.no_grad():
        expected = hf(pixel_values=x).logits
        diff = (model(x) - expected).abs().max().item()
    assert diff <= 1e-5, diff


def test_hf_vitmodel_folder_gives_transformers_tokens_and_pooler(tmp_path):
    hf = random_hf(transformers.ViTModel)
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    assert model.config.representation_size == 48 and model.config.num_classes == 0
    x = torch.from_numpy(images(32, 32))
    with torch.no_grad():
        out = hf(pixel_values=x)
        tokens = model.forward_features(x)
        torch.testing.assert_close(tokens, out.last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), out.pooler_output, atol=1e-5, rtol=0)


def test_hf_in_memory_names_are_read_too(tmp_path):
    hf = random_hf(transformers.ViTForImageClassification, num_labels=3)
    hf.save_pretrained(tmp_path)
    in_memory = {k: v.contiguous() for k, v in hf.state_dict().items()}  # transformers 5: layers.N.attention.q_proj
    assert any(".q_proj." in k for k in in_memory)
    save_file(in_memory, str(tmp_path / "model.safetensors"))
    x = torch.from_numpy(images(32, 32))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(tmp_path)(x), hf(pixel_values=x).logits, atol=1e-5, rtol=0)


def random_vitlab(**overrides):
    model = vitlab.create_model("ViT-Ti/16", **tiny(**{"patch_size": 8, "width": 48, "num_heads": 3, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    model.label_names = [f"class {i}" for i in range(model.config.num_classes)]
    return model


def test_hf_export_loads_in_transformers_with_equal_logits(tmp_path):
    model = random_vitlab()
    source = vitlab.save_pretrained(model, tmp_path / "ours")
    assert cli(["convert", str(source), str(tmp_path / "hf"), "--to", "hf"]) == 0
    hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.id2label[2] == "class 2"
    x = torch.from_numpy(images(32, 32))
    with torch.no_grad():
        diff = (hf(pixel_values=x).logits - model(x)).abs().max().item()
    assert diff <= 1e-5, diff


# ---- round trips ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,overrides", [
    ("vitlab", dict(classifier="gap", image_size=(32, 48))),
    ("vitlab", dict(resnet_layers=(1,), patch_size=1, image_size=32)),
    ("hf", dict()),
    ("timm", dict(representation_size=24)),
    ("timm", dict(classifier="gap", resnet_layers=(1, 1), patch_size=1, image_size=32)),
    ("npz", dict(gelu="tanh", representation_size=24)),
    ("npz", dict(gelu="tanh", classifier="gap", resnet_layers=(1, 1), patch_size=1, image_size=32)),
])
def test_round_trip_is_exact(tmp_path, fmt, overrides):
    model = random_vitlab(**overrides)
    model.preprocessing = {"normalisation": "minus_one_one"}
    path = export_checkpoint(model, tmp_path / fmt, fmt)
    assert detect_format(path) == fmt
    loaded = load_pretrained(path, num_heads=3).eval()
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    h, w = model.config.image_hw
    x = torch.from_numpy(images(h, w))
    with torch.no_grad():
        if fmt == "timm" and model.config.resnet_layers:  # timm's hybrids run with timm's epsilons
            assert (loaded.config.ws_eps, loaded.config.gn_eps) == (1e-8, 1e-5)
        else:
            assert torch.equal(model(x), loaded(x))
    if fmt in ("vitlab", "hf"):
        assert loaded.label_names == model.label_names
    if fmt == "vitlab":
        assert loaded.config == model.config  # and the preprocessing record, completed with the model's size
        assert loaded.preprocessing == of_model(model)


def test_npz_export_has_the_official_layout(tmp_path):
    model = random_vitlab(gelu="tanh")
    path = export_checkpoint(model, tmp_path / "x.npz", "npz")
    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    assert arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"].shape == (48, 3, 16)
    assert arrays["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/out/kernel"].shape == (3, 16, 48)
    assert arrays["embedding/kernel"].shape == (8, 8, 3, 48)
    x = images(32, 32)
    assert np.abs(our_logits(model, x) - reference_forward(arrays, x)).max() <= 1e-4


def test_timm_export_has_timms_names_and_shapes(tmp_path):
    from safetensors.torch import load_file
    model = random_vitlab(representation_size=24, resnet_layers=(1,), patch_size=1, image_size=32)
    tensors = load_file(str(export_checkpoint(model, tmp_path / "m.safetensors", "timm")))
    assert tensors["patch_embed.backbone.stem.conv.weight"].shape == (64, 3, 7, 7)
    assert tensors["patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight"].shape == (256, 64, 1, 1)
    assert tensors["patch_embed.backbone.stages.0.blocks.0.norm3.weight"].shape == (256,)
    assert tensors["blocks.1.attn.qkv.weight"].shape == (144, 48)
    assert tensors["pre_logits.fc.weight"].shape == (24, 48)
    assert tensors["pos_embed"].shape == (1, 1 + 8 * 8, 48)  # one ResNet stage: stride 4
