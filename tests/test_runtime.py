"""vitlab.runtime, the one place that decides device, precision and process group, and the module graph."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import training_support as ts
from vitlab import runtime
from vitlab.cli import build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src"
REFUSAL = "unknown precision 'fp8': expected one of fp32, bf16, fp16, auto"

# Each command with --precision PRECISION (the arguments after it are what the command also requires).
COMMANDS = {
    "eval": ["eval", "--checkpoint", "ckpt", "--data", "cifar10"],
    "fewshot": ["fewshot", "--checkpoint", "ckpt", "--data", "cifar10"],
    "vtab": ["vtab", "--checkpoint", "ckpt", "--task", "dtd=cifar10"],
    "predict": ["predict", "--checkpoint", "ckpt", "a.png"],
    "bench": ["bench"],
}


# ---- one precision vocabulary ----------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reads_the_same_precisions(command):
    for value, canonical in (("fp32", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("auto", "auto"),
                             ("none", "fp32")):  # none: the old `--amp none`
        argv = COMMANDS[command] + ["--precision", value]
        assert build_parser(command).parse_args(argv).precision == canonical


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_an_unknown_precision_with_the_same_message(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(COMMANDS[command] + ["--precision", "fp8"])
    assert exit_.value.code == 2 and REFUSAL in capsys.readouterr().err


def test_training_reads_the_same_precisions_and_refuses_the_same_way(tmp_path, capsys):
    config = ts.write_config(tmp_path / "c.yaml", ts.tiny_config(tmp_path / "run"))
    for value in ("fp32", "bf16", "auto"):
        assert main(["train", str(config), "--check", "--set", f"train.precision={value}"]) == 0
    capsys.readouterr()
    assert main(["train", str(config), "--check", "--set", "train.precision=fp8"]) == 2
    assert REFUSAL in capsys.readouterr().err
    assert main(["train", str(config), "--check", "--set", "train.precision=fp16"]) == 2
    assert "fp16 training needs loss scaling" in capsys.readouterr().err  # known, but not for training


def test_the_library_uses_the_same_vocabulary():
    with pytest.raises(ValueError, match=REFUSAL):
        runtime.autocast("cpu", "fp8")
    with runtime.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with runtime.autocast("cpu", "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert runtime.precision_dtype("fp16") == torch.float16


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                        (False, True, "bf16")])
def test_auto_is_bf16_only_on_a_cpu_that_computes_it_natively(monkeypatch, avx512_bf16, amx, expected):
    # An AVX2 CPU emulates bf16 (a small ViT's step ~10x slower than fp32): auto must mean fp32 there.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert runtime.resolve_precision("auto", "cpu") == expected
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"


def test_the_recipes_of_the_cpu_jobs_ask_for_auto_precision():
    from vitlab.training.config import load_config  # noqa: PLC0415

    for name in ("fashion-mnist", "fashion-mnist-mae", "fashion-mnist-mpp", "fashion-mnist-teacher"):
        assert load_config(name).train.precision == "auto", name


def test_devices():
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu7'"):
        runtime.pick_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.pick_device("cuda")


def test_one_process_needs_no_process_group():
    d = runtime.setup("cpu")
    assert (d.rank, d.world_size, d.is_main, d.enabled) == (0, 1, True, False)
    counts = torch.tensor([3, 4])
    assert runtime.all_reduce_sum(counts) is counts and runtime.all_reduce_floats([1.5, 2]) == [1.5, 2.0]
    assert runtime.all_gather_objects({"a": 1}) == [{"a": 1}]
    runtime.teardown()


# ---- no import cycles ------------------------------------------------------------------------------------
def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], root: Path = SRC) -> set[str]:
    """vitlab modules that `path` imports anywhere (a deferred import inside a function is still a dependency);
    importing a.b.c runs a.b's __init__ too, so parent packages count, except the module's own."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name in modules and name != me and not me.startswith(name + "."):
                    found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_the_module_import_graph_is_acyclic():
    files = {module_name(p): p for p in (SRC / "vitlab").rglob("*.py")}
    graph = {name: imported_modules(path, set(files)) for name, path in files.items()}
    assert "vitlab.runtime" in graph["vitlab.training.trainer"]  # the graph sees relative imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The package's layers, lowest first: a module imports only from its own layer or lower ones (a deferred import
# too). Evaluation is below training (which counts its top-1 with evaluation's loop) and VTAB's protocol, which
# fine-tunes and then evaluates, above both; entry points (`__main__`) sit on top.
LAYERS = [
    ["vitlab.errors", "vitlab.fileio", "vitlab.runtime", "vitlab.download", "vitlab.recipes", "vitlab.resources"],
    ["vitlab.models", "vitlab.data"],
    ["vitlab.checkpoints", "vitlab.inspection"],
    ["vitlab.evaluation"],
    ["vitlab.training"],
    ["vitlab.bench", "vitlab.vtab", "vitlab.serving"],
    ["vitlab.studies"],
    ["vitlab.commands"],
    ["vitlab.cli", "vitlab"],
]


def layer_of(module: str) -> int:
    if module.rpartition(".")[2] == "__main__":
        return len(LAYERS)
    for level, names in enumerate(LAYERS):  # a name covers its submodules, except the package itself ("vitlab")
        if module in names or any(module.startswith(n + ".") for n in names if n != "vitlab"):
            return level
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                  for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def test_no_module_imports_from_a_layer_above_its_own():
    files = {module_name(p): p for p in (SRC / "vitlab").rglob("*.py")}
    graph = {name: imported_modules(path, set(files)) for name, path in files.items()}
    assert upward_imports(graph) == []
    assert upward_imports({"vitlab.evaluation.metrics": {"vitlab.training.trainer"}})  # the check can fail


def test_the_cycle_finder_finds_a_cycle_through_a_deferred_import(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("from .b import x\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from . import a\n")
    files = {module_name(p, tmp_path): p for p in (tmp_path / "pkg").rglob("*.py")}
    graph = {name: imported_modules(path, set(files), tmp_path) for name, path in files.items()}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.a"]


def test_torchrun_environment_is_read_in_one_place(monkeypatch):
    import re

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.launch_env() == runtime.Launch(3, 4, 1) and not runtime.launch_env().is_main
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name)
    assert runtime.launch_env() == runtime.Launch(0, 1, 0) and runtime.launch_env().is_main
    reads = re.compile(r"(\.get\(|\[)\s*[\"'](RANK|WORLD_SIZE|LOCAL_RANK)[\"']")
    readers = [str(p.relative_to(SRC)) for p in (SRC / "vitlab").rglob("*.py") if reads.search(p.read_text())]
    assert readers == ["vitlab/runtime.py"], readers


def test_no_function_is_longer_than_75_lines():
    # The package reads top to bottom in short functions (CONTRIBUTING.md); a longer one is split, not grown.
    long = []
    for path in sorted((SRC / "vitlab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 75:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long
