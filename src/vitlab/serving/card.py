"""The model card the page and GET /v1/model show: architecture, size, preprocessing, and the run's results.

A checkpoint inside a `vitlab train` run directory (the run directory itself, or run/checkpoints/step-N) brings
the run's summary.json, its evaluation (run/eval/metrics.json, what `vitlab eval` writes) and the
training-curve PNG; any other checkpoint has a card without them. The model's name and the run's results are
vitlab.checkpoints.model_card's, as in the ONNX sidecar.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoints.model_card import describe, run_directory, run_results

CURVES_FILE = "training_curves.png"


def curves_path(checkpoint: Path) -> Path | None:
    run = run_directory(checkpoint)
    path = run / CURVES_FILE if run else None
    return path if path is not None and path.is_file() else None


def run_card(checkpoint: Path) -> dict | None:
    results = run_results(checkpoint)
    if results is None:
        return None
    return {**results, "training_curves": "/v1/model/training_curves.png" if curves_path(checkpoint) else None}


def runtime_card(engine, backend: str) -> dict:
    from .. import __version__

    return {"backend": backend, "device": str(engine.device), "precision": engine.precision,
            "vitlab_version": __version__}


def preprocessing_card(engine) -> dict:
    h, w = engine.image_hw
    record = engine.preprocessing
    crop = f"centre {record.crop_fraction:.3g} of the shorter side, then " if record.resize_crop else ""
    return {**{k: v for k, v in record.to_dict().items() if k != "label_names"},  # the labels have their own entry
            "resize": f"{crop}{h}x{w}, {record.interpolation}, antialiased",
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
