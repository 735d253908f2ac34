"""Every script in benchmarks/ still runs: each in its smoke mode (tiny sizes, one round, seconds; the numbers
mean nothing), so that a refactor cannot silently break a command BENCHMARKS.md gives."""

from __future__ import annotations

import importlib.util
import os
import runpy
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from browser_support import browser_missing

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh"))
PYTHON_SCRIPTS = [p for p in SCRIPTS if p.suffix == ".py"]


# scripts whose smoke mode another test runs in process (with more assertions): not run a second time here
SMOKED_ELSEWHERE = {"int8.py": "tests/test_int8_benchmark.py"}


def missing(script: Path) -> str | None:
    """Why the script cannot run here (an optional extra or the browser is not installed), or None."""
    needs = {"int8.py": "onnxruntime", "serve_load.py": "fastapi", "serve_screenshot.py": "fastapi",
             "tensorboard_screenshot.py": "tensorboard"}
    module = needs.get(script.name)
    if module and importlib.util.find_spec(module) is None:
        return f"needs {module}"
    return browser_missing() if script.name.endswith("_screenshot.py") else None


def test_the_scripts_are_found():
    assert {"ssl_speed.py", "throughput.py", "ssl_fashion_mnist.sh"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", PYTHON_SCRIPTS, ids=[p.name for p in PYTHON_SCRIPTS])
def test_every_python_script_imports_and_offers_a_smoke_mode(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put src/ and tests/ on it
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_.value.code == 0 and "--smoke" in capsys.readouterr().out


def smoke_run(script: Path, workdir: Path) -> tuple[list[str], subprocess.CompletedProcess]:
    command = ["bash", str(script), "--smoke", str(workdir / "out")] if script.suffix == ".sh" else \
        [sys.executable, str(script), "--smoke"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               PY=sys.executable, OMP_NUM_THREADS="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    return command, subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The smoke runs of the selected scripts, started at once two at a time (one thread each; mostly start-up)."""
    selected = [item.callspec.params["script"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_every_script_runs_in_its_smoke_mode"]
    selected.sort(key=lambda p: p.suffix != ".sh")  # the longest, the shell script's dozen commands, first
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {script: pool.submit(smoke_run, script, tmp_path_factory.mktemp(script.stem))
               for script in selected if missing(script) is None and script.name not in SMOKED_ELSEWHERE}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_script_runs_in_its_smoke_mode(script, smoke_runs):
    why = missing(script)
    if why:
        pytest.skip(why)
    if script.name in SMOKED_ELSEWHERE:
        pytest.skip(f"its smoke mode runs in {SMOKED_ELSEWHERE[script.name]}")
    command, done = smoke_runs[script].result()
    assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
