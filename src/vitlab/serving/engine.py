"""What the server runs: a checkpoint loaded once, on its fastest path, as `vitlab predict` would preprocess.

An engine turns a batch of normalised images into probabilities and, when asked, the attention maps the page
draws (rollout over the patches and each head's last-layer [class] attention). `TorchEngine` runs a vitlab
model (bf16 packed on a CPU with oneDNN bf16, the fast path of vitlab.models.fast); `OnnxEngine` an exported
ONNX file in onnxruntime (probabilities only: the exported graph has no attention outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..checkpoints.labels import label_names
from ..data.preprocessing import Preprocessing, eval_transform, of_model
from ..runtime import pick_device, resolve_precision


@dataclass
class Output:
    """One batch's results: probabilities (B, classes); with attention, rollout (B, gh, gw) and heads
    (B, heads, gh, gw) as float arrays over the patch grid."""

    probabilities: torch.Tensor
    rollout: np.ndarray | None = None
    heads: np.ndarray | None = None


class Engine:
    """The interface the app and the batcher use; subclasses set the attributes and define `run`."""

    labels: list[str]
    in_chans: int
    image_hw: tuple[int, int]
    preprocessing: Preprocessing  # the checkpoint's record, at the size and channel count the model takes
    has_attention: bool = False

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) -> the model's float input (C, h, w): cropped, resized and normalised by the
        checkpoint's preprocessing record, as `predict` and `eval` do."""
        return eval_transform(self.preprocessing)(image)

    def run(self, x: torch.Tensor, attention: bool = False) -> Output:
        raise NotImplementedError

    def card(self) -> dict:
        raise NotImplementedError


class TorchEngine(Engine):
    """Any checkpoint vitlab loads; attention maps for a Vision Transformer (not for a BiT ResNet)."""

    def __init__(self, checkpoint: str | Path, *, device: str | None = "auto", precision: str = "auto",
                 image_size: int | None = None):
        from ..checkpoints import load_pretrained
        from ..models import ViTConfig
        from ..models.fast import fast_inference

        model = load_pretrained(checkpoint, image_size=image_size).eval().requires_grad_(False)
        cfg = model.config
        self.checkpoint, self.model = Path(checkpoint), model
        self.device = pick_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.labels = label_names(model)
        self.preprocessing = of_model(model)  # at the model's size, which image_size= resampling changes
        self.in_chans, self.image_hw = cfg.in_chans, self.preprocessing.image_size
        self.has_attention = isinstance(cfg, ViTConfig)
        model = model.to(self.device)
        if self.precision != "fp32":
            fast = fast_inference(model, self.precision)  # weights cast once; bf16 on CPU: oneDNN-packed, GELU fused
            self.net, self.dtype = fast.model, fast.dtype
        else:
            self.net, self.dtype = model, torch.float32

    @torch.inference_mode()
    def run(self, x: torch.Tensor, attention: bool = False) -> Output:
        from ..inspection.rollout import attention_rollout, class_attention

        x = x.to(self.device, self.dtype)
        if not (attention and self.has_attention):
            return Output(self.net(x).float().softmax(dim=1).cpu())
        tokens, attentions = self.net.forward_features(x, return_attention=True)
        probabilities = self.net.forward_head(tokens).float().softmax(dim=1).cpu()
        attentions = [a.float().cpu() for a in attentions]
        cfg = self.model.config
        rollout = attention_rollout(attentions, cfg.num_prefix_tokens, cfg.grid_size, cfg.has_class_token)
        heads = class_attention(attentions[-1], cfg.num_prefix_tokens, cfg.grid_size, cfg.has_class_token)
        return Output(probabilities, rollout, heads)

    def card(self) -> dict:
        from .card import torch_model_card

        return torch_model_card(self)


class OnnxEngine(Engine):
    """An exported model (vitlab convert --to onnx) in onnxruntime's CPU provider; labels and preprocessing
    from the sidecar JSON written beside the .onnx file."""

    def __init__(self, path: str | Path, *, threads: int | None = None):
        from ..checkpoints.onnx import load_session, read_sidecar

        self.checkpoint = Path(path)
        self.sidecar = read_sidecar(self.checkpoint)
        self.session = load_session(self.checkpoint, threads=threads)
        self.labels = list(self.sidecar["label_names"])
        self.in_chans = int(self.sidecar["in_chans"])
        self.image_hw = tuple(self.sidecar["image_hw"])
        self.preprocessing = Preprocessing.from_dict(self.sidecar["preprocessing"]).replace(
            image_size=self.image_hw, channels=self.in_chans)
        self.device, self.precision = torch.device("cpu"), self.sidecar.get("precision", "fp32")

    def run(self, x: torch.Tensor, attention: bool = False) -> Output:
        (logits,) = self.session.run(["logits"], {"pixels": x.float().numpy()})
        return Output(torch.from_numpy(logits).float().softmax(dim=1))

    def card(self) -> dict:
        from .card import onnx_model_card

        return onnx_model_card(self)
