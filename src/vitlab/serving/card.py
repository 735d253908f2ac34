"""The model card the page and GET /v1/model show: architecture, size, preprocessing, and the run's results.

A checkpoint inside a `vitlab train` run directory (the run directory itself, or run/checkpoints/step-N) brings
the run's summary.json, its evaluation (run/eval/metrics.json, what `vitlab eval` writes) and the
training-curve PNG; any other checkpoint has a card without them.
"""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY_FILE, CURVES_FILE, EVAL_FILE = "summary.json", "training_curves.png", "eval/metrics.json"


def run_directory(checkpoint: Path) -> Path | None:
    """The `vitlab train` run a checkpoint belongs to, or None."""
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


def curves_path(checkpoint: Path) -> Path | None:
    run = run_directory(checkpoint)
    path = run / CURVES_FILE if run else None
    return path if path is not None and path.is_file() else None


def run_card(checkpoint: Path) -> dict | None:
    run = run_directory(checkpoint)
    if run is None:
        return None
    return {"directory": str(run), "summary": scalars(read_json(run / SUMMARY_FILE)),
            "evaluation": scalars(read_json(run / EVAL_FILE)),
            "training_curves": "/v1/model/training_curves.png" if curves_path(checkpoint) else None}


def runtime_card(engine, backend: str) -> dict:
    from .. import __version__

    return {"backend": backend, "device": str(engine.device), "precision": engine.precision,
            "vitlab_version": __version__}


def preprocessing_card(engine) -> dict:
    h, w = engine.image_hw
    record = engine.preprocessing
    crop = f"centre {record['crop_fraction']:.3g} of the shorter side, then " if record.get("resize_crop") else ""
    return {**{k: v for k, v in record.items() if k != "label_names"},  # the labels have their own entry
            "resize": f"{crop}{h}x{w}, {record.get('interpolation', 'bilinear')}, antialiased",
            "channels": "grey" if engine.in_chans == 1 else "RGB (transparency over white)"}


def torch_model_card(engine) -> dict:
    model, cfg = engine.model, engine.model.config
    return {"checkpoint": str(engine.checkpoint), "name": describe(cfg),
            "architecture": cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
            "num_classes": len(engine.labels), "labels": engine.labels,
            "preprocessing": preprocessing_card(engine), "runtime": runtime_card(engine, "torch"),
            "has_attention": engine.has_attention, "run": run_card(engine.checkpoint)}


def onnx_model_card(engine) -> dict:
    side = engine.sidecar
    return {"checkpoint": str(engine.checkpoint), "name": side.get("name", "ONNX model"),
            "architecture": side.get("architecture"), "parameters": side.get("parameters"),
            "num_classes": len(engine.labels), "labels": engine.labels,
            "preprocessing": preprocessing_card(engine), "runtime": runtime_card(engine, "onnxruntime"),
            "has_attention": engine.has_attention, "run": side.get("run")}


SHAPE_FIELDS = ("width", "depth", "mlp_dim", "num_heads", "patch_size", "resnet_layers", "attention", "layers",
                "width_factor")


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
