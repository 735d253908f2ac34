"""vitlab beside Hugging Face transformers (and timm where it imports), on identical ViT architectures.

    python benchmarks/throughput.py                 # the CPU set: ViT-Ti/S/B, inference + training step,
                                                    # fp32 + bf16, eager + torch.compile
    python benchmarks/throughput.py --quick         # a short version (eager, fewer rounds)
    python benchmarks/throughput.py --write         # also put the table into BENCHMARKS.md
    python benchmarks/throughput.py --smoke         # seconds: a one-block ViT-Ti/16 at 32 px (the tests do this)

On a CUDA machine the same command runs the GPU set: larger batches, timm as a peer (its torchvision imports
there), a CUDA-graph row for vitlab inference, utilisation against the datasheet dense bf16 peak, and
ViT-L/16 training at batch 128 with activation checkpointing (peak memory of each library).

Every contender runs the same workload: a random batch, inference under torch.inference_mode, or a training
step (forward, cross-entropy, backward, fused AdamW step, which is also what the transformers Trainer uses by
default); bf16 means autocast with fp32 master weights for every library. Timings are interleaved
(A B C A B C ...) after warm-up and reported as medians of the rounds. Parameter counts are printed and must
be equal. torch.compile uses the same settings for every library (vitlab.models.fast.compile_model: inductor,
plus weight freezing for CPU inference). "vitlab fast" is vitlab.models.fast.fast_inference (bf16 weights cast
once, oneDNN-packed matmuls with GELU fused on CPU); its natural peer is "HF bf16" (HF cast with .to(bf16)).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import vitlab  # noqa: E402
from vitlab.bench import (Result, Variant, datasheet_peak, format_bytes, inference_step,  # noqa: E402
                          interleave, matmul_step, median, model_flops, peak_step_memory, random_batch,
                          training_step, vitlab_step)
from vitlab.fileio import atomic_write_text  # noqa: E402
from vitlab.models.fast import compile_model, onednn_bf16_available  # noqa: E402
from vitlab.runtime import precision_dtype  # noqa: E402
from vitlab.training.optim import make_adamw  # noqa: E402

TIMM_NAMES = {"ViT-Ti/16": "vit_tiny_patch16_224", "ViT-S/16": "vit_small_patch16_224",
              "ViT-B/16": "vit_base_patch16_224", "ViT-L/16": "vit_large_patch16_224"}
PEERS = ("HF sdpa", "HF eager", "HF bf16", "timm")


@dataclass
class Case:
    model: str
    task: str  # inference | train
    precision: str  # fp32 | bf16
    mode: str  # eager | compile
    batch_size: int
    shape: dict = field(default_factory=dict)  # ViTConfig settings other than the model's, e.g. image_size
    grad_checkpointing: bool = False
    results: dict[str, Result] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    first_call_s: dict[str, float] = field(default_factory=dict)
    peak_flops: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return self.shape.get("image_size", 224)

    @property
    def label(self) -> str:
        shape = "".join(f" {k}={v}" for k, v in self.shape.items())
        return f"{self.model}{shape} {self.task} {self.precision} {self.mode} b{self.batch_size}"


# ---- the contenders ---------------------------------------------------------------------------------
def hf_model(vit_cfg, attn: str):
    from transformers import ViTConfig as HFConfig, ViTForImageClassification
    cfg = HFConfig(hidden_size=vit_cfg.width, num_hidden_layers=vit_cfg.depth, num_attention_heads=vit_cfg.num_heads,
                   intermediate_size=vit_cfg.mlp_dim, image_size=vit_cfg.image_hw[0], patch_size=vit_cfg.patch_size,
                   num_channels=vit_cfg.in_chans, num_labels=vit_cfg.num_classes, hidden_act="gelu",
                   layer_norm_eps=vit_cfg.layer_norm_eps, qkv_bias=vit_cfg.qkv_bias)
    cfg._attn_implementation = attn
    model = ViTForImageClassification(cfg)
    if model.config._attn_implementation != attn:
        raise RuntimeError(f"transformers ignored attn_implementation={attn!r}")
    return model


def timm_model(name: str):
    try:
        import timm
    except Exception as e:  # on this CPU image timm's torchvision import fails
        return None, f"timm does not import here ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
    return timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=1000), None


def peer_step(model, case: Case, x, y):
    """A peer library's step, run exactly as vitlab's (same optimiser, loss, autocast, compile settings)."""
    logits = (lambda out: out.logits) if type(model).__module__.startswith("transformers") else (lambda out: out)
    if case.task == "train":
        model.train()
        if case.grad_checkpointing:
            if hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.set_grad_checkpointing(True)
        run = compile_model(model, fullgraph=False) if case.mode == "compile" else model
        return training_step(run, make_adamw(model, lr=1e-4, weight_decay=0.1), x, y, case.precision, logits)
    model.eval()
    run = compile_model(model, inference=True, fullgraph=False) if case.mode == "compile" else model
    return inference_step(run, x, case.precision, logits)


def contenders(case: Case, device: torch.device, x, y, with_timm: bool) -> dict:
    """name -> (module, step); the modules are kept to count parameters."""
    base = vitlab.create_model(case.model, **case.shape).to(device)
    cfg = base.config
    out = {}
    variant = Variant(case.task, case.precision, case.mode == "compile", grad_checkpointing=case.grad_checkpointing)
    out["vitlab"] = (base, vitlab_step(base, variant, x, y))
    eager_inference = case.task == "inference" and case.mode == "eager"
    if eager_inference and case.precision == "bf16" and (device.type == "cuda" or onednn_bf16_available()):
        fast = copy.deepcopy(base)
        out["vitlab fast"] = (fast, vitlab_step(fast, Variant("inference", "bf16", fast=True), x, y))
    if eager_inference and device.type == "cuda":
        graphed = copy.deepcopy(base)
        out["vitlab CUDA graph"] = (graphed, vitlab_step(graphed, Variant("inference", case.precision, cuda_graph=True), x, y))
    hf = hf_model(cfg, "sdpa").to(device)
    out["HF sdpa"] = (hf, peer_step(hf, case, x, y))
    if case.mode == "eager" and case.task == "inference":  # the slow attention: one case kind is enough
        hf_eager = hf_model(cfg, "eager").to(device)
        out["HF eager"] = (hf_eager, peer_step(hf_eager, case, x, y))
    if eager_inference and case.precision == "bf16":
        hf_bf16 = hf_model(cfg, "sdpa").to(device).to(torch.bfloat16)
        xb = x.to(torch.bfloat16)
        out["HF bf16"] = (hf_bf16, inference_step(hf_bf16.eval(), xb, "fp32", lambda o: o.logits))
    if with_timm:
        tm, why = timm_model(case.model)
        if tm is None:
            case.errors["timm"] = why
        else:
            tm = tm.to(device)
            out["timm"] = (tm, peer_step(tm, case, x, y))
    return out


# ---- running a case ---------------------------------------------------------------------------------
def run_case(case: Case, device: torch.device, rounds: int, warmup: int, repeats: int, with_timm: bool,
             matmul_size: int = 2048) -> Case:
    torch._dynamo.reset()  # each case's fresh models would otherwise pile up against dynamo's recompile limit
    torch.manual_seed(0)
    x, y = random_batch(case.batch_size, case.image_size, 1000, device)
    entries = contenders(case, device, x, y, with_timm)
    case.params = {name: sum(p.numel() for p in module.parameters()) for name, (module, _) in entries.items()}
    if len(set(case.params.values())) != 1:
        raise RuntimeError(f"{case.label}: parameter counts differ: {case.params}")
    steps = {name: step for name, (_, step) in entries.items()}
    for name, step in steps.items():  # the first call compiles (or records the CUDA graph): timed apart
        start = time.perf_counter()
        step()
        case.first_call_s[name] = time.perf_counter() - start
    peak = datasheet_peak(device)
    if peak is None:
        mm, mm_flops = matmul_step(precision_dtype(case.precision), device, n=matmul_size)
        steps["matmul"] = mm
    times = interleave(steps, device, rounds=rounds, warmup=warmup, repeats=repeats)
    case.peak_flops = peak[1] if peak else mm_flops / median(times.pop("matmul"))
    flops = model_flops(entries["vitlab"][0], case.image_size, case.task)
    for name in entries:
        case.results[name] = Result(name, case.batch_size, flops, times[name])
        if case.task == "train":
            case.results[name].peak_memory = peak_step_memory(steps[name], device)
    del entries, steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return case


def run_memory_case(model: str, batch_size: int, device: torch.device, with_timm: bool) -> dict[str, str]:
    """Peak memory of one bf16 training step with activation checkpointing: does it fit, and in how much?"""
    case = Case(model, "train", "bf16", "eager", batch_size, grad_checkpointing=True)
    x, y = random_batch(batch_size, 224, 1000, device)
    out = {}
    builders = {"vitlab": lambda: vitlab.create_model(model), "HF sdpa": lambda: hf_model(vitlab.create_model(model).config, "sdpa")}
    if with_timm:
        builders["timm"] = lambda: timm_model(model)[0]
    for name, build in builders.items():
        module = build()
        if module is None:
            continue
        try:
            module = module.to(device)
            step = (vitlab_step(module, Variant("train", "bf16", grad_checkpointing=True), x, y) if name == "vitlab"
                    else peer_step(module, case, x, y))
            step()
            out[name] = format_bytes(peak_step_memory(step, device))
        except torch.cuda.OutOfMemoryError:
            out[name] = "out of memory"
        del module
        gc.collect()
        torch.cuda.empty_cache()
    return out


# ---- the plan ---------------------------------------------------------------------------------------
def plan(args, device: torch.device) -> list[Case]:
    gpu = device.type == "cuda"
    models = args.models or (["ViT-S/16", "ViT-B/16"] if args.quick else ["ViT-Ti/16", "ViT-S/16", "ViT-B/16"])
    modes = args.modes or (["eager"] if args.quick else ["eager", "compile"])
    precisions = args.precisions or ["fp32", "bf16"]
    tasks = args.tasks or ["inference", "train"]
    batch = {"inference": args.batch_size or (256 if gpu else 8), "train": args.train_batch_size or (128 if gpu else 8)}
    shape = {} if args.image_size == 224 else {"image_size": args.image_size}
    if args.smoke:
        shape["depth"] = 1
    return [Case(m, t, p, mode, batch[t], shape) for mode in modes for m in models for t in tasks for p in precisions]


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or "CPU"
    try:
        cpu = re.search(r"Model name:\s*(.+)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout).group(1)
    except (AttributeError, OSError):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# ---- reporting --------------------------------------------------------------------------------------
def best_vitlab(case: Case) -> Result:
    return max((r for n, r in case.results.items() if n.startswith("vitlab")), key=lambda r: r.images_per_second)


def fastest_peer(case: Case) -> Result | None:
    peers = [r for n, r in case.results.items() if n in PEERS]
    return max(peers, key=lambda r: r.images_per_second) if peers else None


def target(case: Case, device: torch.device) -> float:
    """The targets: CPU fp32 >= 1.0x, bf16 >= 1.1x; GPU bf16 training 1.2x eager / 1.0x compiled, inference 1.1x."""
    if device.type == "cuda":
        if case.task == "inference":
            return 1.1
        return 1.2 if case.precision == "bf16" and case.mode == "eager" else 1.0
    return 1.0 if case.precision == "fp32" else 1.1


def markdown_table(cases: list[Case], device: torch.device) -> str:
    names = [n for n in ("vitlab", "vitlab fast", "vitlab CUDA graph", *PEERS) if any(n in c.results for c in cases)]
    peer_names = [n for n in names if n in PEERS]
    head = (["model", "task", "dtype", "mode", "batch"] + [f"{n} img/s" for n in names]
            + [f"vitlab ÷ {n}" for n in peer_names] + ["best vitlab ÷ fastest peer (target)", "vitlab GFLOP/s",
                                                       "% of peak", "peak mem vitlab / HF sdpa"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cases:
        r = c.results
        v = r["vitlab"]
        cells = [c.model, c.task, c.precision, c.mode, str(c.batch_size)]
        cells += [f"{r[n].images_per_second:.1f}" if n in r else "-" for n in names]
        cells += [f"{v.images_per_second / r[n].images_per_second:.2f}x" if n in r else "-" for n in peer_names]
        best, peer = best_vitlab(c), fastest_peer(c)
        if peer:
            ratio = best.images_per_second / peer.images_per_second
            mark = "met" if ratio >= target(c, device) else "MISSED"
            cells.append(f"{ratio:.2f}x {best.name} vs {peer.name} ({target(c, device):.1f}x {mark})")
        else:
            cells.append("-")
        cells += [f"{best.flops_per_second / 1e9:.1f}", f"{100 * best.flops_per_second / c.peak_flops:.0f}%"]
        mem = (f"{format_bytes(v.peak_memory)} / {format_bytes(r['HF sdpa'].peak_memory)}"
               if c.task == "train" and "HF sdpa" in r else "-")
        cells.append(mem)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def peaks_line(cases: list[Case], device: torch.device, matmul_size: int) -> str:
    if device.type == "cuda":
        peak = datasheet_peak(device)
        return f"Peak: datasheet dense bf16 {peak[1] / 1e12:.0f} TFLOP/s ({peak[0]})." if peak else "Peak: GPU not in the datasheet table."
    by_dtype: dict[str, list[float]] = {}
    for c in cases:
        by_dtype.setdefault(c.precision, []).append(c.peak_flops)
    return f"Peak: a {matmul_size}^3 matmul timed in the same rounds as each case; medians over cases: " + ", ".join(
        f"{p} {median(v) / 1e9:.0f} GFLOP/s" for p, v in by_dtype.items()) + "."


def write_benchmarks_md(path: Path, device: torch.device, block: str) -> None:
    """Replace this device kind's generated block inside BENCHMARKS.md's "## Throughput" section."""
    kind = "gpu" if device.type == "cuda" else "cpu"
    start, end = f"<!-- throughput:{kind}:start -->", f"<!-- throughput:{kind}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "## Throughput" not in text:
        text = text.rstrip("\n") + "\n\n## Throughput\n"
    new = f"{start}\n{block.strip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + new + text[text.index(end) + len(end):]
    else:  # at the end of the Throughput section
        m = re.search(r"^## Throughput\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
        text = text[: m.end()].rstrip("\n") + "\n\n" + new + "\n" + text[m.end():]
    atomic_write_text(path, text)


def save_json(path: Path, cases: list[Case]) -> None:
    data = [{"case": c.label, "params": c.params, "peak_flops": c.peak_flops, "first_call_s": c.first_call_s,
             "results": {n: {"times": r.times, "images_per_second": r.images_per_second,
                             "peak_memory": r.peak_memory} for n, r in c.results.items()}} for c in cases]
    atomic_write_text(path, json.dumps(data, indent=1))


# ---- main -------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="ViT-S/16 and ViT-B/16, eager only, 2 rounds")
    p.add_argument("--models", nargs="+", help="default: ViT-Ti/16 ViT-S/16 ViT-B/16")
    p.add_argument("--tasks", nargs="+", choices=("inference", "train"))
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"))
    p.add_argument("--modes", nargs="+", choices=("eager", "compile"))
    p.add_argument("--image-size", type=int, default=224, help="timm, at 224 px only, is left out at another")
    p.add_argument("--matmul-size", type=int, default=2048, help="the CPU's peak: an N^3 matmul")
    p.add_argument("--batch-size", type=int, help="inference batch (default 8 CPU, 256 GPU)")
    p.add_argument("--train-batch-size", type=int, help="training batch (default 8 CPU, 128 GPU)")
    p.add_argument("--rounds", type=int, help="timed rounds per case (default 3; 2 with --quick)")
    p.add_argument("--warmup", type=int, default=0, help="untimed rounds after the first call (itself untimed)")
    p.add_argument("--repeats", type=int, help="steps per timing (default 1 CPU, 10 GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--no-memory-case", action="store_true", help="GPU: skip ViT-L/16 batch 128 checkpointing")
    p.add_argument("--json", type=Path, help="also save every timing here")
    p.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    p.add_argument("--markdown", type=Path, help="also write the table (and its notes) to this file")
    p.add_argument("--smoke", action="store_true", help="ViT-Ti/16 of one block at 32 px, eager, batch 2, one round, "
                   "a 256^3 matmul, no timm, no memory case: that it runs")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.modes, args.image_size, args.batch_size, args.train_batch_size = ["ViT-Ti/16"], ["eager"], 32, 2, 2
        args.rounds, args.matmul_size, args.no_timm, args.no_memory_case, args.write = 1, 256, True, True, False
    if args.image_size != 224:
        args.no_timm = True
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 3)
    repeats = args.repeats or (10 if device.type == "cuda" else 1)
    with_timm = not args.no_timm
    cases = plan(args, device)
    command = "python benchmarks/throughput.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    load_before = load_average()
    started = time.time()
    print(f"{machine_description(device)}; load average {load_before}; {len(cases)} cases", flush=True)
    for case in tqdm(cases, desc="cases", unit="case"):
        run_case(case, device, rounds, args.warmup, repeats, with_timm, args.matmul_size)
        v = case.results["vitlab"]
        others = ", ".join(f"{n} {r.images_per_second:.1f}" for n, r in case.results.items() if n != "vitlab")
        if args.json:  # after every case, so that an interrupted run keeps what it measured
            save_json(args.json, [c for c in cases if c.results])
        tqdm.write(f"{case.label}: vitlab {v.images_per_second:.1f} img/s; {others}  "
                   f"(params {case.params['vitlab']:,}; first call "
                   + ", ".join(f"{n} {s:.1f}s" for n, s in case.first_call_s.items()) + ")")
    memory_case = None
    if device.type == "cuda" and not args.no_memory_case:
        memory_case = run_memory_case("ViT-L/16", 128, device, with_timm)
        print("ViT-L/16 bf16 training, batch 128, activation checkpointing, peak memory:", memory_case)
    minutes = (time.time() - started) / 60
    table = markdown_table(cases, device)
    notes = sorted({f"{n}: {why}" for c in cases for n, why in c.errors.items()})
    block = "\n".join([
        f"### {'GPU' if device.type == 'cuda' else 'CPU'}: {machine_description(device)}", "",
        f"`{command.strip()}` ({minutes:.1f} min; load average {load_before} before, {load_average()} after; "
        f"{rounds} rounds, medians).", "", peaks_line(cases, device, args.matmul_size), "", table, ""]
        + ([f"ViT-L/16 bf16 training, batch 128, activation checkpointing, peak memory: "
            + ", ".join(f"{k} {v}" for k, v in memory_case.items()), ""] if memory_case else [])
        + [f"- {n}" for n in notes])
    print(block)
    if args.markdown:
        atomic_write_text(args.markdown, block + "\n")
    if args.write:
        write_benchmarks_md(ROOT / "BENCHMARKS.md", device, block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
