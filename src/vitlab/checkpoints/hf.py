"""Hugging Face ViT folders (config.json + model.safetensors of ViTModel / ViTForImageClassification), in and out.

Files on the Hub use the classic names, which transformers 5 renames on load to its in-memory ones:

    ours                     file (classic)                                    transformers 5 in memory
    cls_token                embeddings.cls_token
    pos_embed                embeddings.position_embeddings
    patch_embed.proj         embeddings.patch_embeddings.projection
    blocks.i.attn.qkv (q|k|v) encoder.layer.i.attention.attention.{query,key,value}   layers.i.attention.{q,k,v}_proj
    blocks.i.attn.proj       encoder.layer.i.attention.output.dense            layers.i.attention.o_proj
    blocks.i.norm1 / norm2   encoder.layer.i.layernorm_before / layernorm_after
    blocks.i.mlp.fc1 / fc2   encoder.layer.i.intermediate.dense / output.dense layers.i.mlp.fc1 / fc2
    norm                     layernorm
    pre_logits (+tanh)       pooler.dense (+pooler_act tanh)                   (ViTModel only)
    head                     classifier                                        (ViTForImageClassification)

ViTForImageClassification prefixes the encoder's names with `vit.`. We read both spellings and write the
classic one, which `ViTForImageClassification.from_pretrained` of transformers 4 and 5 both load.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.preprocessing import Preprocessing, mean_std, model_defaults, of_model
from ..fileio import atomic_write, atomic_write_text
from ..models import ViTConfig
from .errors import CheckpointError
from .files import read_json, read_tensors
from .mapping import Pair, as_float32, config_with_overrides, export_tensors, load_into_model

CONFIG_FILE, WEIGHTS_FILES = "config.json", ("model.safetensors", "pytorch_model.bin")
GELU = {"gelu": "exact", "gelu_pytorch_tanh": "tanh", "gelu_new": "tanh"}
NEW_NAMES = (  # transformers 5's in-memory names -> the classic file names
    (r"^(vit\.)?layers\.(\d+)\.attention\.([qkv])_proj\.",
     lambda m: f"{m[1] or ''}encoder.layer.{m[2]}.attention.attention.{dict(q='query', k='key', v='value')[m[3]]}."),
    (r"^(vit\.)?layers\.(\d+)\.attention\.o_proj\.", r"\1encoder.layer.\2.attention.output.dense."),
    (r"^(vit\.)?layers\.(\d+)\.mlp\.fc1\.", r"\1encoder.layer.\2.intermediate.dense."),
    (r"^(vit\.)?layers\.(\d+)\.mlp\.fc2\.", r"\1encoder.layer.\2.output.dense."),
    (r"^(vit\.)?layers\.(\d+)\.", r"\1encoder.layer.\2."),
)


def hf_pairs(cfg: ViTConfig, prefix: str = "") -> list[Pair]:
    p = prefix
    pairs = [Pair("cls_token", p + "embeddings.cls_token"), Pair("pos_embed", p + "embeddings.position_embeddings")]
    for x in ("weight", "bias"):
        pairs.append(Pair(f"patch_embed.proj.{x}", f"{p}embeddings.patch_embeddings.projection.{x}"))
        pairs.append(Pair(f"norm.{x}", f"{p}layernorm.{x}"))
        for i in range(cfg.depth):
            ours, theirs = f"blocks.{i}.", f"{p}encoder.layer.{i}."
            if x == "weight" or cfg.qkv_bias:
                pairs += [Pair(ours + f"attn.qkv.{x}", theirs + f"attention.attention.{name}.{x}", part=j, parts=3)
                          for j, name in enumerate(("query", "key", "value"))]
            for o, t in (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"),
                         ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
                pairs.append(Pair(ours + f"{o}.{x}", theirs + f"{t}.{x}"))
        if cfg.representation_size:
            pairs.append(Pair(f"pre_logits.{x}", f"pooler.dense.{x}"))
        if cfg.num_classes:
            pairs.append(Pair(f"head.{x}", f"classifier.{x}"))
    return pairs


def classic_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in tensors.items():
        for pattern, repl in NEW_NAMES:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def is_hf_folder(path: Path) -> bool:
    config = path / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        meta = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "model_type" in meta


def infer_config(meta: dict, t: dict[str, torch.Tensor], path: Path) -> dict:
    if meta.get("model_type") != "vit":
        raise CheckpointError(f"{path / CONFIG_FILE}: model_type is {meta.get('model_type')!r}; only Hugging Face "
                              "'vit' models (ViTModel, ViTForImageClassification) are supported")
    act = meta.get("hidden_act", "gelu")
    if act not in GELU:
        raise CheckpointError(f"{path / CONFIG_FILE}: hidden_act {act!r} is not a GELU vitlab supports ({sorted(GELU)})")
    if "pooler.dense.weight" in t and meta.get("pooler_act", "tanh") != "tanh":
        raise CheckpointError(f"{path / CONFIG_FILE}: pooler_act {meta['pooler_act']!r}; only tanh is supported")
    image_size = meta.get("image_size", 224)
    width = meta.get("hidden_size", 768)
    return dict(
        patch_size=meta.get("patch_size", 16), width=width, depth=meta.get("num_hidden_layers", 12),
        mlp_dim=meta.get("intermediate_size", 3072), num_heads=meta.get("num_attention_heads", 12),
        image_size=image_size if isinstance(image_size, int) else tuple(image_size),
        in_chans=meta.get("num_channels", 3), layer_norm_eps=meta.get("layer_norm_eps", 1e-12),
        gelu=GELU[act], qkv_bias=meta.get("qkv_bias", True),
        representation_size=t["pooler.dense.weight"].shape[0] if "pooler.dense.weight" in t else None,
        num_classes=t["classifier.weight"].shape[0] if "classifier.weight" in t else 0,
    )


def label_names(meta: dict, num_classes: int) -> list[str] | None:
    id2label = meta.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(num_classes)]
    if not num_classes or None in names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def load_hf(path: Path, **overrides) -> nn.Module:
    """Load a Hugging Face ViT folder; the architecture comes from config.json, the head from the weights."""
    path = Path(path)
    meta = read_json(path / CONFIG_FILE)
    weights = next((path / f for f in WEIGHTS_FILES if (path / f).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: no {' or '.join(WEIGHTS_FILES)} beside config.json "
                              "(sharded Hub checkpoints are not supported)")
    tensors = classic_names(as_float32(read_tensors(weights)))
    prefix = "vit." if any(k.startswith("vit.") for k in tensors) else ""
    tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    cfg = config_with_overrides(infer_config(meta, tensors, path), overrides, path)
    model = load_into_model(cfg, tensors, hf_pairs(cfg), weights)
    model.label_names = label_names(meta, cfg.num_classes)
    settings = path / "preprocessor_config.json"
    model.preprocessing = hf_record(read_json(settings) if settings.is_file() else None, model)
    return model


PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # Hugging Face stores Pillow's filter numbers


def hf_record(config: dict | None, model: nn.Module) -> Preprocessing:
    """A Hugging Face image processor's settings; without preprocessor_config.json, ViTImageProcessor's
    defaults (resize to the model's size, bilinear, mean = std = 0.5, which is x / 127.5 - 1)."""
    config = config or {}
    record = dict(model_defaults(model), interpolation=PIL_RESAMPLE.get(config.get("resample", 2), "bilinear"),
                  **mean_std(config.get("image_mean", (0.5,) * 3), config.get("image_std", (0.5,) * 3), 3))
    if config.get("do_center_crop") and config.get("crop_size"):
        resized, crop = config.get("size") or {}, config["crop_size"]
        shorter = resized.get("shortest_edge") or min(resized.get("height", 0), resized.get("width", 0))
        crop_side = crop.get("height", 0) if isinstance(crop, dict) else int(crop)
        if shorter and crop_side and crop_side <= shorter:
            record.update(resize_crop=True, crop_fraction=crop_side / shorter)
    return Preprocessing(**record)


# ---- writing ------------------------------------------------------------------------------------------------
def hf_config(cfg: ViTConfig, labels: list[str] | None, architecture: str) -> dict:
    names = labels or [f"LABEL_{i}" for i in range(cfg.num_classes)]
    h, w = cfg.image_hw
    return {
        "architectures": [architecture], "model_type": "vit",
        "hidden_size": cfg.width, "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim, "hidden_act": "gelu" if cfg.gelu == "exact" else "gelu_pytorch_tanh",
        "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.attention_dropout,
        "initializer_range": 0.02, "layer_norm_eps": cfg.layer_norm_eps,
        "image_size": h if h == w else [h, w], "patch_size": cfg.patch_size, "num_channels": cfg.in_chans,
        "qkv_bias": cfg.qkv_bias, "encoder_stride": cfg.patch_size,
        "pooler_output_size": cfg.representation_size or cfg.width, "pooler_act": "tanh",
        "id2label": {str(i): n for i, n in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)},
    }


def check_exportable(cfg: ViTConfig) -> None:
    problems = []
    if cfg.resnet_layers is not None:
        problems.append("it is a hybrid (transformers' ViT has no ResNet stem)")
    if cfg.classifier != "token":
        problems.append("it pools by global average (transformers' ViT classifies the [class] token)")
    if cfg.representation_size and cfg.num_classes:
        problems.append("it has a pre-logits layer and a head (ViTForImageClassification has no pre-logits)")
    extras = [what for what, on in (("a distillation token", cfg.distill_token), ("register tokens", cfg.reg_tokens),
                                    ("LayerScale", cfg.layer_scale), (f"{cfg.posemb} position embeddings",
                                                                      cfg.posemb != "learned_1d"),
                                    ("fc_norm", cfg.fc_norm), (f"{cfg.attention} attention", cfg.attention != "full"),
                                    ("shifted patch tokens", cfg.patch_embed != "linear")) if on]
    if extras:
        problems.append(f"it has {', '.join(extras)} (transformers' ViT has none)")
    if problems:
        raise CheckpointError("cannot export to Hugging Face: " + "; ".join(problems) +
                              "; use --to vitlab, timm or npz")


def save_hf(model: nn.Module, directory: str | Path) -> Path:
    """Write a folder that ViTForImageClassification.from_pretrained (or ViTModel, for a headless model) loads."""
    cfg = model.config
    check_exportable(cfg)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    classifier = cfg.num_classes > 0
    prefix = "vit." if classifier else ""
    tensors = {(prefix + k if not k.startswith("classifier.") else k): v.detach().cpu().contiguous()
               for k, v in export_tensors(model.state_dict(), hf_pairs(cfg)).items()}
    architecture = "ViTForImageClassification" if classifier else "ViTModel"
    meta = hf_config(cfg, getattr(model, "label_names", None), architecture)
    atomic_write(directory / WEIGHTS_FILES[0], lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(directory / "preprocessor_config.json", json.dumps(preprocessor_config(model), indent=2) + "\n")
    return directory


def preprocessor_config(model: nn.Module) -> dict:
    pre = of_model(model)
    mean, std = (list(pre.mean), list(pre.std)) if pre.normalisation == "mean_std" else ([0.5] * 3, [0.5] * 3)
    h, w = model.config.image_hw
    return {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": h, "width": w},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std}
