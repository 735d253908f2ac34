"""ONNX, the format `vitlab convert --to onnx [--quantize int8]` writes and `vitlab serve --onnx` reads (needs
'vitlab[onnx]').

The graph takes "pixels" (N, C, H, W) float32, already normalised, and gives "logits" (N, classes); the batch
axis is dynamic. Opset 17 is the first with a LayerNormalization operator, which onnxruntime's CPU provider
runs as one fused kernel. A JSON sidecar beside the .onnx (model.onnx -> model.json) keeps what the graph
cannot: label names, preprocessing, input size and the model card, so `vitlab serve --onnx` needs nothing else.

int8 is onnxruntime's dynamic quantisation: MatMul/Gemm weights stored as int8 (per output channel), the
activations quantised on the fly per batch to uint8; everything else (attention softmax, LayerNorm, GELU) stays
fp32. The weights use 7 bits ([-64, 64]): on x86 CPUs without VNNI, onnxruntime's uint8 x int8 kernel
(VPMADDUBSW) adds each pair of products in a saturating int16, and a full-range int8 weight times an activation
near 255 (LayerNorm outputs quantise around a zero point of ~128) overflows it, which cost 0.3 of probability
on the test models. With |w| <= 64 a pair is at most 255 * 128 = 32640 < 32767, so every x86 CPU computes the
exact product and the same logits; with VNNI (int32 accumulation) the 8th bit would be safe but the file
must serve on any CPU.
Before quantising, onnxruntime's transformer optimiser fuses residual-add + LayerNorm and bias + GELU into its
CPU kernels (the quantised graph no longer matches those patterns at load time).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..data.preprocessing import Preprocessing, of_model
from ..errors import quiet_logger
from ..fileio import atomic_path, atomic_write_text
from .errors import CheckpointError
from .labels import label_names
from .model_card import describe, run_results

OPSET = 17
INPUT, OUTPUT = "pixels", "logits"
QUANTIZATIONS = ("int8",)


def sidecar_path(onnx_path: str | Path) -> Path:
    return Path(onnx_path).with_suffix(".json")


def optional(module: str):
    """`module`, one of the 'vitlab[onnx]' extras, or a one-line CheckpointError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise CheckpointError(f"{e.name or module} is not installed; pip install 'vitlab[onnx]'") from None


class _Logits(nn.Module):
    """The exported function: forward only (no attention outputs), in eval mode, fp32."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


def export_onnx(model: nn.Module, destination: str | Path, *, quantize: str | None = None, opset: int = OPSET,
                source: str | Path | None = None, calibration: Iterable[torch.Tensor] | None = None) -> Path:
    """Write `model` as an ONNX file (and its sidecar JSON); returns the .onnx path.

    quantize="int8" is dynamic int8, or static (QDQ) int8 when `calibration` gives batches of normalised pixels.
    """
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}; got {quantize!r}")
    optional("onnx")  # torch's exporter needs it
    if quantize:
        optional("onnxruntime")
    destination = Path(destination)
    if destination.suffix != ".onnx":
        destination = destination / "model.onnx" if destination.is_dir() or not destination.suffix else \
            destination.with_suffix(".onnx")
    destination.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval().requires_grad_(False)
    cfg = model.config
    example = torch.zeros(2, cfg.in_chans, *cfg.image_hw)
    with tempfile.TemporaryDirectory(prefix="vitlab-onnx-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_graph(_Logits(model), example, fp32, opset)
        with atomic_path(destination) as out:
            if quantize == "int8" and calibration is not None:  # before the fusions: see quantize_int8_static
                quantize_int8_static(fp32, Path(out), (b.numpy() for b in calibration))
            elif quantize == "int8":
                quantize_int8(fuse_for_cpu(fp32, cfg), Path(out))
            else:
                os.replace(fp32, out)
    write_sidecar(model, destination, precision=quantize or "fp32", opset=opset, source=source)
    return destination


def export_graph(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    """torch.onnx's TorchScript-based exporter, with a dynamic batch axis."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-level shape checks
        try:
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        except Exception as e:  # the exporter's own error classes; the message names the unsupported op
            raise CheckpointError(f"cannot export this model to ONNX opset {opset}: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def fuse_for_cpu(path: Path, cfg) -> Path:
    """onnxruntime's transformer fusions (SkipLayerNormalization, BiasGelu), written beside `path`."""
    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    fused = optimizer.optimize_model(str(path), model_type="vit", num_heads=cfg.num_heads, hidden_size=cfg.width,
                                     opt_level=1)
    out = path.with_name(path.stem + "-fused.onnx")
    fused.save_model_to_file(str(out))
    return out


def quantize_int8(source: Path, destination: Path) -> None:
    """onnxruntime's dynamic int8: weights quantised here, activations per batch at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_logger():  # onnxruntime.quantization logs to the root logger
        quantize_dynamic(source, destination, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=True,  # 7-bit weights: no int16 saturation (module doc)
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def quantize_int8_static(source: Path, destination: Path, calibration: Iterable[np.ndarray]) -> None:
    """onnxruntime's static int8 in QDQ form: the same 7-bit per-channel weights as quantize_int8, and uint8
    activations whose ranges are fixed from `calibration` (batches of normalised pixels), so that no
    min/max is computed per call. Only the weight matmuls are quantised (as in the dynamic graph); the
    attention's activation x activation matmuls stay fp32. `source` is the graph before fuse_for_cpu: after
    it, the MatMuls fed by a fused SkipLayerNormalization get no activation range, and onnxruntime runs them
    as weight-only int8 (MatMulNBits) with fp32 activations."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {INPUT: np.asarray(batch, dtype=np.float32)}

    with quiet_logger():  # onnxruntime.quantization logs to the root logger
        quantize_static(source, destination, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"], nodes_to_exclude=activation_matmuls(source),
                        calibrate_method=CalibrationMethod.MinMax,  # biases stay fp32, added after the matmul
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "QuantizeBias": False})


def activation_matmuls(path: Path) -> list[str]:
    """The MatMul nodes that multiply two activations (attention's q k^T and weights x v): no weight input."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and not constants.intersection(n.input)]


def write_sidecar(model: nn.Module, onnx_path: Path, *, precision: str, opset: int, source=None) -> Path:
    cfg = model.config
    run = run_results(Path(source)) if source is not None else None
    if run is not None:
        run["training_curves"] = None  # the served ONNX model does not carry the run's PNG
    meta = {"format": "vitlab-onnx", "name": describe(cfg) + (" (ONNX int8)" if precision == "int8" else " (ONNX)"),
            "source": None if source is None else str(source), "precision": precision, "opset": opset,
            "input": INPUT, "output": OUTPUT, "in_chans": cfg.in_chans, "image_hw": list(cfg.image_hw),
            "label_names": label_names(model), "preprocessing": of_model(model).to_dict(),
            "architecture": cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters()), "run": run}
    path = sidecar_path(onnx_path)
    atomic_write_text(path, json.dumps(meta, indent=2) + "\n")
    return path


def read_sidecar(onnx_path: str | Path) -> dict:
    path = sidecar_path(onnx_path)
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; an ONNX file needs the sidecar that `vitlab convert --to onnx` "
                         "writes beside it (labels, preprocessing, input size)") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, not a {type(meta).__name__}")
    missing = [k for k in ("label_names", "preprocessing", "in_chans", "image_hw") if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {', '.join(missing)}")
    problem = sidecar_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: {problem}; write it again with `vitlab convert --to onnx`")
    return meta


def sidecar_problem(meta: dict) -> str | None:
    """What is wrong with a sidecar's values (each as `export_onnx` writes it), or None."""
    labels, hw = meta["label_names"], meta["image_hw"]
    if not isinstance(labels, list) or not all(isinstance(name, str) for name in labels):
        return f"label_names must be a list of names, not {labels!r:.60}"
    if meta["in_chans"] not in (1, 3):
        return f"in_chans must be 1 or 3, not {meta['in_chans']!r:.60}"
    if not (isinstance(hw, list) and len(hw) == 2 and all(isinstance(v, int) and v > 0 for v in hw)):
        return f"image_hw must be [height, width], not {hw!r:.60}"
    if not isinstance(meta["preprocessing"], dict):
        return f"preprocessing must be an object, not {meta['preprocessing']!r:.60}"
    try:
        Preprocessing.from_dict(meta["preprocessing"])
    except (TypeError, ValueError) as e:
        return f"preprocessing: {e}"
    return None


def load_session(onnx_path: str | Path, threads: int | None = None):
    """An onnxruntime session on the CPU provider with every graph optimisation."""
    ort = optional("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes for a corrupt or foreign file
        raise CheckpointError(f"{onnx_path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
