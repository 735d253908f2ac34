"""A benchmark on several torch releases side by side, each in a venv of its own (vitlab and its peers in it).

    python benchmarks/torch_versions.py --versions 2.13.0 2.14.1 -- --modes eager --threads 2 --rounds 5
    python benchmarks/torch_versions.py --versions 2.13.0 2.14.1 --script benchmarks/attention_paths.py
    python benchmarks/torch_versions.py --versions 2.14.1 --tests      # the model and fast-path tests there
    python benchmarks/torch_versions.py --versions 2.14.1 --setup-only --dry-run   # what it would run
    python benchmarks/torch_versions.py --smoke     # seconds: this interpreter as the one release, no venv

Each release X gets .venv-torch-X beside the repository's .venv (made once, then reused): `pip install
torch==X`, then this checkout with its test extra (transformers) under constraints.txt's pins, torch's
excepted. PyPI's Linux x86 wheels of torch are its CUDA builds (several GB with their nvidia-* packages);
they run on a machine without a GPU, with the same CPU kernels as the +cpu builds that only PyTorch's own
package index serves. To compare like with like, give both releases this way (not the +cpu .venv).

The runs alternate between releases (A B A B ...), --repeats times. For benchmarks/throughput.py (the
default script) each run saves its JSON and the summary gives, per case, the median over repeats of the best
vitlab images/s and of its ratio to the fastest peer, one column per release.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ("HF sdpa", "HF eager", "HF bf16", "timm")  # benchmarks/throughput.py's


def venv_dir(version: str) -> Path:
    return ROOT / f".venv-torch-{version}"


def setup_commands(version: str, python: str) -> list[list[str]]:
    venv = venv_dir(version)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    constraints = venv / "constraints-without-torch.txt"
    return [[python, "-m", "venv", str(venv)], pip + [f"torch=={version}"],
            ["write", str(constraints)],  # constraints.txt less its torch pin (done in-process, below)
            pip + ["-c", str(constraints), "-e", f"{ROOT}[test]"]]


def run_command(command: list[str], dry_run: bool) -> None:
    print("+ " + shlex.join(command), flush=True)
    if dry_run:
        return
    if command[0] == "write":
        lines = (ROOT / "constraints.txt").read_text().splitlines()
        Path(command[1]).write_text("\n".join(x for x in lines if not x.startswith("torch==")) + "\n")
        return
    subprocess.run(command, check=True, cwd=ROOT)


def ensure_venv(version: str, python: str, dry_run: bool) -> Path:
    interpreter = venv_dir(version) / "bin" / "python"
    if not (venv_dir(version) / ".installed").exists():
        for command in setup_commands(version, python):
            run_command(command, dry_run)
        if not dry_run:
            (venv_dir(version) / ".installed").touch()
    return interpreter


def best_vitlab_and_ratio(case: dict) -> tuple[float, float | None]:
    """From one case of throughput.py's --json: the best vitlab images/s and its ratio to the fastest peer."""
    results = case["results"]
    best = max(r["images_per_second"] for name, r in results.items() if name.startswith("vitlab"))
    peers = [r["images_per_second"] for name, r in results.items() if name in PEERS]
    return best, (best / max(peers) if peers else None)


def summary(runs: dict[str, list[Path]]) -> str:
    """One row per case, one column pair per release: median best-vitlab images/s and ratio to the fastest peer."""
    per_version: dict[str, dict[str, list[tuple[float, float | None]]]] = {}
    for version, files in runs.items():
        for path in files:
            for case in json.loads(path.read_text()):
                per_version.setdefault(version, {}).setdefault(case["case"], []).append(best_vitlab_and_ratio(case))
    versions = list(runs)
    cases = list(dict.fromkeys(c for v in versions for c in per_version.get(v, {})))
    head = ["case"] + [f"torch {v}: vitlab img/s, ÷ fastest peer" for v in versions]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for case in cases:
        cells = [case]
        for v in versions:
            measured = per_version.get(v, {}).get(case)
            if not measured:
                cells.append("-")
                continue
            ips = statistics.median(m[0] for m in measured)
            ratios = [m[1] for m in measured if m[1] is not None]
            cells.append(f"{ips:.2f}, {statistics.median(ratios):.2f}x" if ratios else f"{ips:.2f}, -")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--versions", nargs="+", default=["2.13.0", "2.14.1"])
    p.add_argument("--script", default="benchmarks/throughput.py", help="run in each venv, with the args after --")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per release")
    p.add_argument("--tests", action="store_true", help="run the model and fast-path tests in each venv instead")
    p.add_argument("--setup-only", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--out", type=Path, default=ROOT / "torch-versions", help="JSON files and the summary")
    p.add_argument("--python", default=sys.executable, help="the interpreter that makes the venvs")
    p.add_argument("--smoke", action="store_true", help="no venv: this interpreter as the only release, "
                   "throughput.py --smoke once, into a temporary folder, and the summary: that it runs")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args = p.parse_args(argv[:split])
    args.script_args = argv[split + 1:]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.script_args, args.repeats, args.out = ["--smoke"], 1, Path(tempfile.mkdtemp(prefix="torch-versions-"))
        pythons = {importlib.metadata.version("torch"): Path(sys.executable)}
    else:
        pythons = {v: ensure_venv(v, args.python, args.dry_run) for v in args.versions}
    if args.setup_only:
        return 0
    if args.tests:
        for version, python in pythons.items():
            run_command([str(python), "-m", "pytest", "-o", "addopts=", "-q", "-x", "tests/test_models.py",
                         "tests/test_fast_paths.py", "tests/test_model_pins.py", "tests/test_training.py"], args.dry_run)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    throughput = Path(args.script).name == "throughput.py"
    runs: dict[str, list[Path]] = {v: [] for v in pythons}
    for repeat in range(args.repeats):
        for version, python in pythons.items():
            command = [str(python), args.script, *args.script_args]
            if throughput:
                runs[version].append(args.out / f"torch-{version}-{repeat}.json")
                command += ["--json", str(runs[version][-1])]
            run_command(command, args.dry_run)
    if throughput and not args.dry_run:
        table = summary(runs)
        (args.out / "summary.md").write_text(table + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
