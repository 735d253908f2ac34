"""int8 on the CPU: every candidate beside the fastest torch path, in one process, on two models.

    python benchmarks/int8.py --checkpoint runs/fashion-mnist --threads 2 --rounds 7 --markdown int8.md
    python benchmarks/int8.py --smoke                # tiny models, seconds (tests/test_int8_benchmark.py)

Workloads, one table each:
- ViT-B/16 at 224 px, batch 8, random weights: images/s (int8 calibrated on random images).
- the main job's model (--checkpoint, a Fashion-MNIST run; 28 px, batch 256): images/s and top-1 on the
  10,000 test images, int8 calibrated on --calibration-images training images. Without --checkpoint, a
  randomly initialised model of the main job's shape, images/s only.

Paths (the same input for all; timings interleaved A B C A B C ... after a warm-up round, median of --rounds;
exporting, quantising, calibrating and compiling are timed apart, with the first call, as "setup s"):
- torch fp32 eager, and compiled (vitlab.models.fast.compile_model: inductor, frozen weights);
- torch bf16 fast path (vitlab.models.fast.fast_inference) and compiled bf16, only where oneDNN has native
  bf16 (AVX-512 BF16, AMX): elsewhere bf16 is emulated, several times slower than fp32, and left out;
- onnxruntime fp32; onnxruntime dynamic int8 (what `vitlab convert --to onnx --quantize int8` writes);
  onnxruntime static QDQ int8 (per-channel weights, uint8 activations calibrated by min/max);
- OpenVINO fp32 and OpenVINO + NNCF int8 (transformer preset), both from the same fp32 ONNX file
  (pip install 'vitlab[openvino]');
- PT2E int8: torchao's X86InductorQuantizer on the Linear layers, compiled by inductor with frozen weights
  ('vitlab[pt2e]').
Every int8 path stores 7-bit weights: without VNNI, x86 int8 kernels add pairs of uint8 x int8 products in a
saturating int16 (docs/serving.md, "ONNX and int8"). A path whose package is missing is listed with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import vitlab  # noqa: E402
from vitlab.bench import interleave, median  # noqa: E402
from vitlab.models.fast import compile_model, fast_inference, onednn_bf16_available  # noqa: E402
from vitlab.checkpoints.onnx import export_onnx, load_session  # noqa: E402
from vitlab.studies.report import cpu_name  # noqa: E402

MAIN_SHAPE = dict(patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4, classifier="gap", image_size=28,
                  in_chans=1, num_classes=10)  # configs/fashion-mnist.toml's model
SMOKE_SHAPE = dict(width=32, depth=2, mlp_dim=64, num_heads=2, num_classes=10)


@dataclass
class Workload:
    name: str
    model: torch.nn.Module
    batch_size: int
    calibration: list[torch.Tensor]  # batches of normalised pixels, each of batch_size images
    test: object = None  # EvalBatches for top-1, or None


@dataclass
class Path_:
    name: str
    run: Callable[[torch.Tensor], torch.Tensor]  # normalised pixels -> fp32 logits
    setup_s: float = 0.0


@dataclass
class Row:
    path: str
    images_per_s: float | None = None
    vs_fastest_torch: float | None = None
    setup_s: float | None = None
    top1: float | None = None
    points_vs_torch_fp32: float | None = None
    agrees_with_torch_fp32: float | None = None  # % of images with torch fp32's top-1 class
    note: str = ""
    times: list[float] = field(default_factory=list)


# ---- the paths ----------------------------------------------------------------------------------------
def torch_runner(module) -> Callable:
    def run(x):
        with torch.inference_mode():
            return module(x).float()
    return run


def onnx_runner(session) -> Callable:
    return lambda x: torch.from_numpy(session.run(["logits"], {"pixels": x.numpy()})[0])


def openvino_runner(compiled) -> Callable:
    request = compiled.create_infer_request()
    return lambda x: torch.from_numpy(request.infer({0: x.numpy()})[0].copy())


def torch_paths(model, compile_: bool) -> dict[str, Callable[[], Callable]]:
    paths = {"torch fp32": lambda: torch_runner(model)}
    if compile_:
        paths["torch fp32 compiled"] = lambda: torch_runner(compile_model(copy.deepcopy(model), inference=True))
    if onednn_bf16_available():
        paths["torch bf16 fast path"] = lambda: torch_runner(fast_inference(model, "bf16"))
        if compile_:
            paths["torch bf16 compiled"] = lambda: torch_runner(
                compile_model(fast_inference(model, "bf16", pack=False), inference=True))
    return paths


def onnxruntime_paths(model, work: Workload, folder: Path, threads: int) -> dict[str, Callable[[], Callable]]:
    fp32 = folder / f"{work.name}-fp32.onnx"
    return {
        "onnxruntime fp32": lambda: onnx_runner(load_session(export_onnx(model, fp32), threads)),
        "onnxruntime int8 dynamic": lambda: onnx_runner(load_session(
            export_onnx(model, folder / f"{work.name}-dynamic.onnx", quantize="int8"), threads)),
        "onnxruntime int8 static QDQ": lambda: onnx_runner(load_session(
            export_onnx(model, folder / f"{work.name}-static.onnx", quantize="int8", calibration=work.calibration),
            threads)),
    }


def openvino_paths(model, work: Workload, folder: Path, threads: int) -> dict[str, Callable[[], Callable]]:
    import nncf
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    fp32 = folder / f"{work.name}-fp32.onnx"

    def read():
        return core.read_model(str(fp32 if fp32.exists() else export_onnx(model, fp32)))

    def int8():
        # SmoothQuant, on by default in the transformer preset, cost the main job's model 36 points of top-1
        # (48% against 84.54% in fp32, with 512 or 1,024 calibration images; off: 84.47%)
        no_smooth_quant = nncf.AdvancedSmoothQuantParameters(matmul=-1)
        quantized = nncf.quantize(
            read(), nncf.Dataset([b.numpy() for b in work.calibration]), model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(work.calibration),  # its samples are our batches
            advanced_parameters=nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE,
                                                                    smooth_quant_alphas=no_smooth_quant))
        return openvino_runner(core.compile_model(quantized, "CPU", config))

    return {"OpenVINO fp32": lambda: openvino_runner(core.compile_model(read(), "CPU", config)),
            "OpenVINO + NNCF int8": int8}


def pt2e_int8(model, work: Workload, compile_: bool) -> Callable:
    """torchao's PT2E flow for x86: export, observe the calibration batches, convert, compile with inductor."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86

    config = x86.get_default_x86_inductor_quantization_config()
    seven_bits = dataclasses.replace(config.weight, quant_min=-64, quant_max=63)  # see the module doc
    # the Linear layers only, like the onnxruntime graphs (its oneDNN conv prepack has no fake-tensor kernel)
    quantizer = x86.X86InductorQuantizer().set_module_type_qconfig(
        torch.nn.Linear, dataclasses.replace(config, weight=seven_bits))
    exported = torch.export.export(copy.deepcopy(model).eval(), (work.calibration[0],)).module()
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in work.calibration:
            prepared(batch)
    converted = convert_pt2e(prepared)
    if not compile_:
        return torch_runner(converted)
    # inductor's freezing set globally while it compiles (the first call): given as a torch.compile option
    # instead, its int8 weight prepacking is traced with fake tensors, which onednn.qlinear_prepack does not take
    compiled = torch.compile(converted)
    with torch._inductor.config.patch(freezing=True), torch.no_grad():
        compiled(work.calibration[0])

    def run(x):  # under no_grad as compiled (inference_mode would be a new guard, and compile again)
        with torch.no_grad():
            return compiled(x).float()
    return run


def build_paths(work: Workload, folder: Path, threads: int, compile_: bool) -> tuple[list[Path_], dict[str, str]]:
    """Every path that can be built here, each timed from its build through its first call; the others with why."""
    model = work.model
    builders = torch_paths(model, compile_)
    builders.update(onnxruntime_paths(model, work, folder, threads))
    missing = {}
    try:
        builders.update(openvino_paths(model, work, folder, threads))
    except ImportError as e:
        missing["OpenVINO"] = f"{e.name} is not installed (pip install 'vitlab[openvino]')"
    try:
        import torchao  # noqa: F401
        builders["PT2E int8 (X86InductorQuantizer)"] = lambda: pt2e_int8(model, work, compile_)
    except ImportError:
        missing["PT2E int8 (X86InductorQuantizer)"] = "torchao is not installed (pip install 'vitlab[pt2e]')"
    paths, example = [], work.calibration[0]
    for name, build in builders.items():
        start = time.perf_counter()
        run = build()
        run(example)
        paths.append(Path_(name, run, time.perf_counter() - start))
        print(f"  {work.name}: {name} ready in {paths[-1].setup_s:.1f} s", flush=True)
    return paths, missing


# ---- measuring ----------------------------------------------------------------------------------------
def speed(work: Workload, paths: list[Path_], rounds: int, warmup: int) -> dict[str, list[float]]:
    x = work.calibration[0]
    return interleave({p.name: (lambda p=p: p.run(x)) for p in paths}, torch.device("cpu"), rounds=rounds,
                      warmup=warmup)


def top1(work: Workload, paths: list[Path_]) -> tuple[dict[str, float], dict[str, float]]:
    """Top-1 (%) of every path on the test batches, and how often (%) it picks torch fp32's class. The last
    batch is padded to the batch size (compiled and exported paths have static shapes)."""
    names = [p.name for p in paths]
    correct, agree, total = dict.fromkeys(names, 0), dict.fromkeys(names, 0), 0
    for x, y, _ in work.test:
        n = len(y)
        if n < work.batch_size:
            x = torch.cat([x, x.new_zeros(work.batch_size - n, *x.shape[1:])])
        predicted = {p.name: p.run(x)[:n].argmax(1) for p in paths}
        for name, classes in predicted.items():
            correct[name] += int((classes == y).sum())
            agree[name] += int((classes == predicted["torch fp32"]).sum())
        total += n
    return ({name: 100 * c / total for name, c in correct.items()},
            {name: 100 * c / total for name, c in agree.items()})


def measure(work: Workload, folder: Path, args) -> dict:
    paths, missing = build_paths(work, folder, args.threads, not args.no_compile)
    times = speed(work, paths, args.rounds, args.warmup)
    accuracy, agreement = top1(work, paths) if work.test is not None else ({}, {})
    ips = {name: work.batch_size / median(t) for name, t in times.items()}
    fastest = max((p.name for p in paths if p.name.startswith("torch")), key=ips.get)
    rows = []
    for p in paths:
        row = Row(p.name, ips[p.name], ips[p.name] / ips[fastest], p.setup_s, times=times[p.name])
        if accuracy:
            row.top1, row.points_vs_torch_fp32 = accuracy[p.name], accuracy[p.name] - accuracy["torch fp32"]
            row.agrees_with_torch_fp32 = agreement[p.name]
        rows.append(row)
    rows += [Row(name, note=why) for name, why in missing.items()]
    return {"workload": work.name, "batch_size": work.batch_size, "fastest_torch": fastest,
            "calibration_images": sum(len(b) for b in work.calibration), "rows": [vars(r) for r in rows]}


# ---- the workloads ------------------------------------------------------------------------------------
def random_batches(model, batch_size: int, images: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    cfg = model.config
    batches = max(1, images // batch_size)
    return [torch.randn(batch_size, cfg.in_chans, *cfg.image_hw, generator=g) for _ in range(batches)]


def data_batches(model, spec: str, split: str, batch_size: int):
    from vitlab.data import build_dataset
    from vitlab.evaluation import EvalBatches
    from vitlab.data.preprocessing import of_model

    dataset = build_dataset(spec, split, in_chans=model.config.in_chans)
    return EvalBatches(dataset, preprocessing=of_model(model), batch_size=batch_size)


def calibration_from(batches, batch_size: int, images: int) -> list[torch.Tensor]:
    """Whole batches of `batch_size` images, `images` in all (rounded up to a whole batch)."""
    flat = torch.cat([x for x, _, _ in batches])[: max(images, batch_size)]
    flat = torch.cat([flat, flat[: (-len(flat)) % batch_size]])
    return list(flat.split(batch_size))


def large_workload(args) -> Workload:
    if args.smoke:
        model = vitlab.create_model("ViT-Ti/16", image_size=32, patch_size=8, **SMOKE_SHAPE)
        torch.nn.init.normal_(model.head.weight, std=0.5)  # classes that differ, so paths can disagree
    else:
        model = vitlab.create_model(args.model)
    return Workload("ViT (smoke)" if args.smoke else args.model, model.eval(), args.batch_size,
                    random_batches(model, args.batch_size, args.calibration_images))


def main_workload(args) -> Workload:
    if args.smoke:
        model = vitlab.create_model("ViT-Ti/16", **{**MAIN_SHAPE, **SMOKE_SHAPE})
        torch.nn.init.normal_(model.head.weight, std=0.5)
    elif args.checkpoint:
        model = vitlab.load_pretrained(args.checkpoint)
    else:
        model = vitlab.create_model("ViT-Ti/16", **MAIN_SHAPE)
        return Workload("main job's model (random weights)", model.eval(), args.main_batch_size,
                        random_batches(model, args.main_batch_size, args.calibration_images))
    model = model.float().eval()
    train = data_batches(model, args.data, f"train[:{args.calibration_images}]", args.main_batch_size)
    return Workload("main job's model", model, args.main_batch_size,
                    calibration_from(train, args.main_batch_size, args.calibration_images),
                    data_batches(model, args.data, args.test_split, args.main_batch_size))


def workloads(args) -> list[Workload]:
    torch.manual_seed(0)
    build = {"large": large_workload, "main": main_workload}
    return [build[name](args) for name in args.workloads]


# ---- reporting ----------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = [f"**{result['workload']}**, batch {result['batch_size']}, int8 calibrated on "
             f"{result['calibration_images']} images; fastest torch path: {result['fastest_torch']}", "",
             "| path | images/s | x fastest torch | setup s | top-1 % | vs torch fp32 (points) | same class as "
             "torch fp32 % |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["images_per_s"] is None:
            lines.append(f"| {r['path']} | - | - | - | - | - | {r['note']} |")
            continue
        acc = (f"{r['top1']:.2f} | {r['points_vs_torch_fp32']:+.2f} | {r['agrees_with_torch_fp32']:.2f}"
               if r["top1"] is not None else "- | - | -")
        lines.append(f"| {r['path']} | {r['images_per_s']:.2f} | {r['vs_fastest_torch']:.2f}x | "
                     f"{r['setup_s']:.1f} | {acc} |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for name in ("onnxruntime", "openvino", "nncf", "torchao"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="the main job's model (a Fashion-MNIST run directory or checkpoint)")
    p.add_argument("--data", default="fashion_mnist", help="its data set, for calibration and top-1")
    p.add_argument("--test-split", default="test")
    p.add_argument("--workloads", nargs="+", choices=("large", "main"), default=["large", "main"])
    p.add_argument("--model", default="ViT-B/16", help="the large workload (random weights, 224 px)")
    p.add_argument("--batch-size", type=int, default=8, help="the large workload's batch")
    p.add_argument("--main-batch-size", type=int, default=256)
    p.add_argument("--calibration-images", type=int, default=512)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-compile", action="store_true", help="leave out inductor (torch compiled, PT2E eager)")
    p.add_argument("--smoke", action="store_true", help="tiny models and data, one round, no compiling")
    p.add_argument("--out", type=Path, help="write everything measured here as JSON")
    p.add_argument("--markdown", type=Path, help="write the tables here")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch_size, args.main_batch_size, args.calibration_images = 4, 16, 32
        args.rounds, args.warmup, args.no_compile, args.test_split = 1, 0, True, "test[:256]"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started, load = time.time(), os.getloadavg()
    report = {"cpu": cpu_name(), "threads": args.threads, "versions": versions(), "load_average_before": load}
    print(f"{report['cpu']}, {args.threads} threads, {report['versions']}, load average {load}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vitlab-int8-") as tmp:
        report["workloads"] = [measure(w, Path(tmp), args) for w in workloads(args)]
    report["load_average_after"], report["minutes"] = os.getloadavg(), (time.time() - started) / 60
    tables = "\n\n".join(markdown(r) for r in report["workloads"])
    print(tables)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(f"{report['cpu']}, {args.threads} threads, {report['versions']}\n\n{tables}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
