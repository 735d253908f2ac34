"""A model's fast paths: torch.compile, CUDA graphs, packed bf16 CPU inference.

Each path computes the same function as the plain model (tests/test_fast_paths.py holds them to it); they
change only how fast it runs and how much memory it takes. (Mixed precision is vitlab.runtime.autocast; the
fused optimiser is vitlab.training.optim's.)

    model = vitlab.create_model("ViT-B/16")
    with autocast("cpu", "bf16"):                            # bf16 matmuls, fp32 master weights
        loss = F.cross_entropy(compile_model(model)(x), y)
    fast = fast_inference(model)                             # bf16 weights, oneDNN-packed, GELU fused
    run = cuda_graph_inference(model.cuda(), x.cuda())       # inference replayed as one CUDA graph
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..runtime import autocast, precision_dtype


# ---- torch.compile ----------------------------------------------------------------------------------
def compile_model(model: nn.Module, *, inference: bool = False, mode: str | None = None,
                  fullgraph: bool = True, backend: str = "inductor") -> nn.Module:
    """torch.compile as one graph (vitlab's models have no graph break).

    inference=True on CPU also "freezes" the weights into the graph (inductor's freezing), which lets it
    prepack them for oneDNN and fold constants: much faster, but later changes to the weights are not seen,
    so use it only on a model that is done training and call it under torch.no_grad/inference_mode.
    `mode` is torch.compile's ('max-autotune', 'reduce-overhead', ...).
    """
    if backend != "inductor":
        return torch.compile(model, fullgraph=fullgraph, backend=backend)
    options = dict(torch._inductor.list_mode_options(mode)) if mode else {}
    if inference and _device_of(model).type == "cpu":
        options["freezing"] = True
    return torch.compile(model, fullgraph=fullgraph, options=options or None)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# ---- CUDA graphs ------------------------------------------------------------------------------------
class CudaGraphInference:
    """A model's forward recorded once as a CUDA graph and replayed: no per-kernel launch cost.

    Inputs must have the example's shape, dtype and device; each call copies them into the graph's input
    buffer and returns a copy of its output (pass copy_output=False to get the graph's own buffer, which
    the next call overwrites).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor, precision: str = "fp32",
                 warmup: int = 3, copy_output: bool = True):
        if not torch.cuda.is_available() or example.device.type != "cuda":
            raise ValueError(f"cuda_graph_inference needs a CUDA model and example; the example is on "
                             f"{example.device}{'' if torch.cuda.is_available() else ' and CUDA is not available'}")
        self.model, self.copy_output = model.eval(), copy_output
        self.precision = precision
        self.static_input = example.detach().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream: cuBLAS handles, autotuning
            for _ in range(warmup):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_output = self._forward()

    def _forward(self) -> torch.Tensor:
        with torch.inference_mode(), autocast("cuda", self.precision):
            return self.model(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.static_input
        if x.shape != s.shape or x.dtype != s.dtype or x.device != s.device:
            raise ValueError(f"this CUDA graph was recorded for {tuple(s.shape)} {s.dtype} on {s.device}; "
                             f"got {tuple(x.shape)} {x.dtype} on {x.device}")
        s.copy_(x)
        self.graph.replay()
        return self.static_output.clone() if self.copy_output else self.static_output


def cuda_graph_inference(model: nn.Module, example: torch.Tensor, precision: str = "fp32",
                         **kwargs) -> CudaGraphInference:
    """Record `model`'s forward on `example` as a CUDA graph; returns a callable that replays it."""
    return CudaGraphInference(model, example, precision, **kwargs)


# ---- packed bf16 inference on CPU -------------------------------------------------------------------
def onednn_bf16_available() -> bool:
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """An inference-only bf16 Linear whose weight is reordered once into oneDNN's blocked layout.

    `activation` ('gelu' with algorithm 'none' or 'tanh') runs as a post-op inside the matmul kernel, so the
    hidden activations are written once instead of twice.
    """

    def __init__(self, linear: nn.Linear, activation: str = "none", algorithm: str = ""):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.activation, self.algorithm = activation, algorithm
        weight = linear.weight.detach().to(torch.bfloat16)
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight, None))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, self.in_features), self.packed_weight, self.bias,
                                               self.activation, [], self.algorithm)
        return y.view(*x.shape[:-1], self.out_features)


def _pack_linears(module: nn.Module) -> None:
    """Swap every nn.Linear below `module` for a PackedLinear; fold a following GELU into its matmul."""
    for name, child in module.named_children():
        act = getattr(module, "act", None)
        if isinstance(child, nn.Linear):
            if name == "fc1" and isinstance(act, nn.GELU):  # vit.MLP: fc1 -> act -> dropout -> fc2
                setattr(module, name, PackedLinear(child, "gelu", act.approximate))
                module.act = nn.Identity()
            else:
                setattr(module, name, PackedLinear(child))
        else:
            _pack_linears(child)


class FastInference(nn.Module):
    """An inference-only copy of a model in a low precision: inputs are cast in, outputs cast back out."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).to(x.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x.to(self.dtype)).to(x.dtype)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.model.forward_head(tokens.to(self.dtype), pre_logits).to(tokens.dtype)


def fast_inference(model: nn.Module, precision: str = "bf16", pack: bool | None = None) -> FastInference:
    """A frozen inference copy of `model` with its weights cast to `precision` once (not per call, as autocast does).

    On a CPU with oneDNN bf16 (pack=None means: when available), every Linear is also prepacked for oneDNN
    and each MLP's GELU fused into its first matmul. The original model is left as it was.
    """
    dtype = precision_dtype(precision)
    fast = copy.deepcopy(model).eval().requires_grad_(False).to(dtype)
    if pack is None:
        pack = dtype == torch.bfloat16 and _device_of(fast).type == "cpu" and onednn_bf16_available()
    if pack:
        if dtype != torch.bfloat16 or _device_of(fast).type != "cpu":
            raise ValueError("pack=True needs a bf16 model on the CPU (oneDNN's packed bf16 matmul)")
        _pack_linears(fast)
    return FastInference(fast, dtype)


__all__ = ["CudaGraphInference", "FastInference", "PackedLinear", "compile_model", "cuda_graph_inference",
           "fast_inference", "onednn_bf16_available"]
