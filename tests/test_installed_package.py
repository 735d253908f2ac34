"""The package as a user installs it: the wheel built from this tree, in a fresh virtual environment, used from a
folder outside the repository. A module or data file left out of the wheel fails here, not on a user's machine.

The fresh environment holds only the wheel; its dependencies (the pinned torch and the rest) are the ones this
test runs with, seen through a path file rather than installed again, so that the test takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser_support import vitlab_serve
from serving_support import call
from vitlab.data.fashion_mnist import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vitlab"

pytestmark = pytest.mark.slow


def build_wheel(out: Path) -> Path:
    """The wheel of a clean copy of the sources (no build/ or egg-info left over from this tree)."""
    source = out / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # with the setuptools installed here when there is one (seconds), else in pip's isolated build environment
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out / "dist"), str(source)])
    (wheel,) = (out / "dist").glob("vitlab-*.whl")
    return wheel


def fresh_environment(directory: Path, wheel: Path) -> Path:
    """A virtual environment with the wheel installed; returns its bin/ folder."""
    venv.create(directory, with_pip=False)
    bin_dir = directory / "bin"
    site = Path(run([str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]))
    ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    (site / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")  # paths only: no editable install
    run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q", "--no-deps",
         "--no-index", str(wheel)])
    return bin_dir


def user_env() -> dict:
    """This environment without anything that would put the source tree on the path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(command: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=user_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout.strip()


def package_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_the_built_wheel_installs_and_runs_from_anywhere(tmp_path):
    wheel = build_wheel(tmp_path / "build")
    bin_dir = fresh_environment(tmp_path / "venv", wheel)
    home = tmp_path / "user"
    home.mkdir()
    vitlab = str(bin_dir / "vitlab")
    # the main job's recipe by name, shrunk to seconds; the quick commands alongside (two at a time)
    train = [vitlab, "train", "fashion-mnist", "--set", "train.steps=3", "--set", "train.max_minutes=none",
             "--set", "model.overrides.width=32", "--set", "model.overrides.depth=1", "--set",
             "model.overrides.mlp_dim=64", "--set", "model.overrides.num_heads=2", "--set", "data.batch_size=16",
             "--set", "train.precision=fp32", "--set", 'data.train_split="train[:256]"',
             "--set", 'data.eval_split="test[:32]"']
    commands = {"train": train, "where": [str(bin_dir / "python"), "-c", "import vitlab; print(vitlab.__file__)"],
                "version": [vitlab, "--version"], "recipes": [vitlab, "recipes"],
                "models": [vitlab, "models", "--filter", "ViT-B"], "studies": [vitlab, "study", "--list"]}
    with ThreadPoolExecutor(max_workers=2) as pool:
        out = {name: future.result() for name, future in
               {name: pool.submit(run, command, home) for name, command in commands.items()}.items()}

    installed = Path(out["where"]).parent
    assert installed.is_relative_to(tmp_path / "venv")  # the wheel's copy, not the source tree
    assert package_files(PACKAGE) - package_files(installed) == set()  # every module and data file
    version = wheel.name.split("-")[1]
    assert out["version"] == f"vitlab {version}"
    listed = [line.split()[0] for line in out["recipes"].splitlines()]
    assert listed == sorted(p.stem for p in (PACKAGE / "recipes").glob("*.toml"))
    assert "ViT-B/16" in out["models"] and "pooling" in out["studies"]
    run_dir = home / "runs" / "fashion-mnist-pretrain"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()

    image = home / "shirt.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
    predicted = json.loads(run([vitlab, "predict", "--checkpoint", str(run_dir), str(image), "--json"], home))
    labels = [p["label"] for p in predicted["predictions"][0]["predictions"]]
    assert predicted["vitlab_version"] == version and len(labels) == 5 and set(labels) <= set(CLASS_NAMES)

    with vitlab_serve("--checkpoint", str(run_dir), "--device", "cpu", program=(vitlab,), env=user_env(),
                      cwd=home) as (url, _):
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        status, _, page = call(port, "GET", "/")
        assert status == 200 and b"<title>vitlab" in page  # the page is package data
        status, _, answer = call(port, "POST", "/v1/predict", body=image.read_bytes(),
                                 headers={"Content-Type": "image/png"})
        assert status == 200 and [p["label"] for p in answer[0]["predictions"]] == labels
