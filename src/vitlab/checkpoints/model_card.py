"""The README.md written beside a saved model: what a Hub user reads before loading it.

It says what the model is (architecture and its settings, parameter count, resolution, classes), how to feed
it (the preprocessing record saved with the weights), how it did (the metrics of the run that wrote it,
where known), how it was made (the command) and how to load it. The front matter carries the Hub's
metadata fields (library_name, tags, pipeline_tag).

The card `vitlab serve` shows and the ONNX sidecar (checkpoints/onnx.py) take two facts from here: the model's
name (`describe`) and the results of the `vitlab train` run a checkpoint belongs to (`run_results`).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..models import BiTConfig, ViTConfig

ARCHITECTURE_FIELDS = ("patch_size", "width", "depth", "mlp_dim", "num_heads", "image_size", "in_chans",
                       "num_classes", "classifier", "representation_size", "resnet_layers", "resnet_width",
                       "class_token", "distill_token", "reg_tokens", "layer_scale", "posemb", "fc_norm", "gelu",
                       "layer_norm_eps", "qkv_bias", "width_factor", "layers")
SHAPE_FIELDS = ("width", "depth", "mlp_dim", "num_heads", "patch_size", "resnet_layers", "attention", "layers",
                "width_factor")
SUMMARY_FILE, EVAL_FILE = "summary.json", "eval/metrics.json"


def current_command() -> str | None:
    """The command line of this process when it is the `vitlab` program (or `python -m vitlab`)."""
    argv = list(sys.argv)
    if not argv or not argv[0]:
        return None
    program = argv[0].rsplit("/", 1)[-1]
    if program == "vitlab" or argv[0].endswith(("vitlab/__main__.py", "vitlab/cli.py")):
        return shlex.join(["vitlab", *argv[1:]])
    return None


def model_card(cfg, num_parameters: int, *, label_names=None, preprocessing=None, metrics: dict | None = None,
               command: str | None = None, name: str | None = None) -> str:
    kind = "BiT ResNet" if isinstance(cfg, BiTConfig) else ("hybrid ResNet + ViT" if getattr(
        cfg, "resnet_layers", None) is not None else "Vision Transformer")
    settings = {k: v for k, v in cfg.to_dict().items() if k in ARCHITECTURE_FIELDS and v not in (None, False, 0)
                or k == "num_classes"}
    if "resnet_layers" not in settings:
        settings.pop("resnet_width", None)
    from .. import __version__

    title = name or f"vitlab {kind}"
    lines = [
        "---", "library_name: vitlab", "tags:", "- image-classification", "- vision-transformer", "- vitlab",
        "pipeline_tag: image-classification", "---", "",
        f"# {title}", "",
        f"A {kind} (Dosovitskiy et al., *An Image is Worth 16x16 Words*, ICLR 2021) saved by vitlab in its "
        "own format: `config.json` (architecture, label names, preprocessing) and `model.safetensors`.", "",
        "## Architecture", "",
        f"- parameters: {num_parameters:,}",
        *(f"- {k}: {json.dumps(v) if isinstance(v, (list, tuple, dict)) else v}" for k, v in settings.items()),
        "", "## Preprocessing", "",
        describe_preprocessing(preprocessing, cfg), "",
        "## Labels", "",
        describe_labels(label_names, settings.get("num_classes")), "",
        "## Metrics", "",
        describe_metrics(metrics), "",
        "## How it was made", "",
        f"```bash\n{command}\n```" if command else "Not recorded (saved from Python, not by a `vitlab` command).",
        "", f"Written by vitlab {__version__}.", "", "## Use", "",
        "```python\nimport vitlab\n\nmodel = vitlab.load_pretrained(\"PATH_OR_hf-hub:ORG/NAME\").eval()\n"
        "logits = model(images)  # (B, C, H, W), preprocessed as above\n```", "",
        "Other formats: `vitlab convert PATH out --to hf|timm|npz`.", "",
    ]
    return "\n".join(lines)


def describe_preprocessing(pre: dict | None, cfg) -> str:
    """The preprocessing record (vitlab.data.preprocessing) in words; the paper's when there is none."""
    pre = pre or {}
    size = pre.get("image_size") or getattr(cfg, "image_size", None)
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    interpolation = pre.get("interpolation", "bilinear")
    if pre.get("resize_crop"):
        geometry = (f"centre crop of {pre.get('crop_fraction', 0.875):g} of the image, resized to {h} x {w} px "
                    f"({interpolation})")
    else:
        geometry = f"resize to {h} x {w} px ({interpolation})"
    if pre.get("normalisation") == "mean_std":
        how = f"pixels in [0, 1], minus mean {list(pre.get('mean'))}, divided by std {list(pre.get('std'))}"
    else:
        how = "pixels mapped to [-1, 1] (x / 127.5 - 1), the paper's preprocessing"
    channels = pre.get("channels", getattr(cfg, "in_chans", 3))
    return (f"{geometry[0].upper() + geometry[1:]}; {how}; {channels} channel{'s' if channels != 1 else ''}. "
            "(The record is in config.json under `preprocessing`; vitlab's commands apply it.)")


def describe_labels(label_names, num_classes) -> str:
    if not num_classes:
        return "None: a feature extractor (no classification head)."
    if not label_names:
        return f"{num_classes} classes, unnamed."
    shown = ", ".join(map(str, label_names[:10])) + (", ..." if len(label_names) > 10 else "")
    return f"{num_classes} classes: {shown}"


def is_accuracy(key: str, metrics: dict) -> bool:
    """An accuracy (shown as a percentage): by its name, or a run's best_metric / last_metric(_ema) when the run's
    `metric` is one (it may be a loss)."""
    named = key.removesuffix("_ema") in ("best_metric", "last_metric")
    return "accuracy" in key or (named and "accuracy" in str(metrics.get("metric", "")))


def describe_metrics(metrics: dict | None) -> str:
    if not metrics:
        return "None recorded with these weights."
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if value is None or isinstance(value, (dict, list)):
            continue
        if isinstance(value, float):
            shown = f"{100 * value:.2f}%" if is_accuracy(key, metrics) and value <= 1 else f"{value:.4g}"
        else:
            shown = value
        rows.append(f"| {key} | {shown} |")
    return "\n".join(rows)


def describe(cfg) -> str:
    """'ViT-Ti/16 at 224x224 px' where the shape is a registered one, else its width, depth, heads and patch."""
    from ..models.registry import list_models, model_config

    fields = cfg.to_dict()
    size = fields.get("image_size", 224)
    h, w = (size, size) if isinstance(size, int) else size
    for name in list_models():
        ref = model_config(name).to_dict()
        if all(fields.get(k) == ref[k] for k in SHAPE_FIELDS if k in ref):
            return f"{name} at {h}x{w} px"
    if "layers" in fields:
        return f"BiT ResNet, units {tuple(fields['layers'])}, width x{fields['width_factor']}, {h}x{w} px"
    return (f"ViT, width {cfg.width}, depth {cfg.depth}, {cfg.num_heads} heads, MLP {cfg.mlp_dim}, "
            f"patch {cfg.patch_size}, {h}x{w} px")


# ---- the run a checkpoint came from -------------------------------------------------------------------------
def run_directory(checkpoint: Path) -> Path | None:
    """The `vitlab train` run a checkpoint belongs to (the run directory itself, or run/checkpoints/step-N), or
    None."""
    checkpoint = Path(checkpoint)
    if (checkpoint / "checkpoints").is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints" and (checkpoint.parent.parent / "metrics.jsonl").is_file():
        return checkpoint.parent.parent
    return None


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def scalars(data: dict | None) -> dict | None:
    """The numbers and strings of a metrics file (a confusion matrix or per-class lists stay out of the card)."""
    if data is None:
        return None
    return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None}


def run_results(checkpoint: Path) -> dict | None:
    """The run's directory, its summary.json and its evaluation (run/eval/metrics.json, what `vitlab eval`
    writes), or None for a checkpoint outside a run."""
    run = run_directory(checkpoint)
    if run is None:
        return None
    return {"directory": str(run), "summary": scalars(read_json(run / SUMMARY_FILE)),
            "evaluation": scalars(read_json(run / EVAL_FILE))}
