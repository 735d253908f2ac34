"""Top-k labels with probabilities for image files (`vitlab predict`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoints.labels import label_names
from ..data.config import DataConfig
from ..data.errors import BadImage
from ..data.images import decode
from ..data.preprocessing import of_model
from ..runtime import autocast


def read_image(path: str | Path, in_chans: int) -> torch.Tensor:
    """An image file as uint8 C x H x W, read as every command reads it (`vitlab.data.images.decode`);
    ValueError naming the file when it cannot be read."""
    try:
        return decode(str(path), str(path), in_chans, DataConfig.max_pixels)
    except BadImage as e:
        raise ValueError(f"{path}: cannot read as an image ({e.reason})") from None


def top_predictions(probabilities: torch.Tensor, names: list[str], k: int) -> list[list[dict]]:
    """Per row of (B, classes) probabilities, the k best as [{"label", "index", "probability"}], best first."""
    top = probabilities.float().topk(min(k, probabilities.shape[1]), dim=1)
    return [[{"label": names[c], "index": c, "probability": q} for q, c in zip(p, i)]
            for p, i in zip(top.values.tolist(), top.indices.tolist())]


@torch.inference_mode()
def predict_files(model: nn.Module, paths, *, topk: int = 5, batch_size: int = 32, device="cpu", precision: str = "fp32",
                  image_size=None) -> list[dict]:
    """[{"file", "predictions": [{"label", "index", "probability"}, ...]} or {"file", "error"}] per path, in order."""
    device = torch.device(device)
    model = model.eval().to(device)
    record, names = of_model(model), label_names(model)
    if image_size is not None:
        record = record.replace(image_size=image_size)
    in_chans = model.config.in_chans
    k = min(topk, model.num_classes)
    results = []
    for start in range(0, len(paths), batch_size):
        chunk, images = [], []
        for path in paths[start:start + batch_size]:
            try:
                images.append(record.geometry(read_image(path, in_chans)))
                chunk.append(str(path))
            except ValueError as e:
                results.append({"file": str(path), "error": str(e)})
        if not images:
            continue
        x = record.normalise(torch.stack(images)).to(device)
        with autocast(device, precision):
            logits = model(x)
        for path, best in zip(chunk, top_predictions(logits.float().softmax(dim=1), names, k)):
            results.append({"file": path, "predictions": best})
    order = {str(p): n for n, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["file"]])


def format_predictions(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines.append(r["file"])
        if "error" in r:
            lines.append(f"  error: {r['error']}")
            continue
        for p in r["predictions"]:
            lines.append(f"  {100 * p['probability']:6.2f}%  {p['label']}")
    return "\n".join(lines)
