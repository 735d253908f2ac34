"""Bad input through the real command line: every expected failure is one line on stderr and exit code 2.

Most cases run `vitlab.cli.main` in this process (the same function the `vitlab` entry point calls); a few run
`python -m vitlab` in a subprocess to show the installed entry point behaves the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny

import vitlab
from vitlab.cli import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny vitlab checkpoint folder (5 classes, 32 px, 3 channels)."""
    return vitlab.save_pretrained(vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8)),
                                  tmp_path_factory.mktemp("ckpt") / "tiny")


def refused(capsys, argv, *needles) -> str:
    """Run `vitlab ARGV`; assert exit code 2, one line on stderr that names each needle, and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err
    assert lines[0].startswith(f"vitlab {argv[0]}: error: "), lines[0]
    for needle in needles:
        assert str(needle) in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# ---- the handler itself -------------------------------------------------------------------------------
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITLAB_DEBUG", "1")
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--data", "fashion_mnist"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("vitlab eval: error: ")


def test_ctrl_c_exits_130_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from vitlab.commands import models

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "vitlab models: interrupted"

    def buggy(args):
        raise TypeError("a bug")

    monkeypatch.setattr(models, "run", buggy)
    with pytest.raises(TypeError, match="a bug"):
        main(["models"])


def test_os_errors_are_one_line(monkeypatch, capsys):
    import errno

    from vitlab.commands import models

    def disk_full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/model.safetensors")

    monkeypatch.setattr(models, "run", disk_full)
    refused(capsys, ["models"], "/runs/x/model.safetensors", "disk full")


# ---- checkpoints --------------------------------------------------------------------------------------
EVAL_COMMANDS = {
    "eval": ["--data", "fashion_mnist"],
    "fewshot": ["--data", "fashion_mnist"],
    "vtab": ["--task", "dtd=fashion_mnist"],
    "predict": ["image.png"],
    "bench": ["--measure", "inference"],
    "inspect": ["--data", "fashion_mnist", "--out", "inspect-out"],
}


@pytest.mark.parametrize("command", EVAL_COMMANDS)
def test_missing_checkpoint(command, tmp_path, capsys):
    refused(capsys, [command, "--checkpoint", tmp_path / "missing", *EVAL_COMMANDS[command]], tmp_path / "missing")


def test_convert_missing_checkpoint(tmp_path, capsys):
    refused(capsys, ["convert", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "o", "--to", "hf"],
            tmp_path / "missing")


def test_real_entry_point_behaves_the_same(tmp_path):
    env = dict(os.environ, VITLAB_DEBUG="")
    result = subprocess.run([sys.executable, "-m", "vitlab", "eval", "--checkpoint", str(tmp_path / "missing"),
                             "--data", "fashion_mnist"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("vitlab eval: error: ") and str(tmp_path / "missing") in result.stderr


# ---- one vocabulary -----------------------------------------------------------------------------------
def _parser(command):
    from vitlab.cli import build_parser

    parser = build_parser(command)
    return next(a for a in parser._actions if a.dest == "command").choices[command]


def _options(command) -> set[str]:
    return {s for a in _parser(command)._actions for s in a.option_strings}


@pytest.mark.parametrize("command", ["eval", "fewshot", "vtab", "predict", "inspect", "bench", "convert"])
def test_every_checkpoint_is_given_with_checkpoint(command):
    assert "--checkpoint" in _options(command)


@pytest.mark.parametrize("command", ["eval", "fewshot", "vtab", "inspect", "convert", "train"])
def test_every_command_that_writes_files_takes_out(command):
    assert "--out" in _options(command)


@pytest.mark.parametrize("command", ["eval", "fewshot", "vtab", "predict", "inspect", "bench", "convert", "data",
                                     "models"])
def test_json_everywhere(command):
    assert "--json" in _options(command)


@pytest.mark.parametrize("command", ["eval", "fewshot", "vtab", "inspect", "data"])
def test_data_root_is_one_name(command):
    options = _options(command)
    assert "--data-root" in options and "--root" in options  # the old spelling, hidden
    assert "--root" not in _parser(command).format_help()


def test_old_spellings_still_work(checkpoint):
    p = _parser("eval")
    new = p.parse_args(["--checkpoint", "c", "--data", "d", "--data-root", "r", "--out", "o", "--precision", "fp32"])
    old = p.parse_args(["--checkpoint", "c", "--data", "d", "--root", "r", "--output-dir", "o", "--amp", "none"])
    assert (old.data_root, old.out, old.precision) == (new.data_root, new.out, new.precision) == ("r", "o", "fp32")
    assert new.device == "auto" and _parser("bench").parse_args([]).device == "auto"
    assert _parser("inspect").parse_args(["--model", "m", "--out", "o"]).device == "auto"
    assert _parser("bench").parse_args(["--task", "train"]).measure == "train"
    assert "--task" not in _parser("bench").format_help()
    assert _parser("bench").parse_args(["--precision", "auto"]).precision == "auto"


def test_a_bare_directory_is_an_image_folder(tmp_path):
    assert _parser("eval").parse_args(["--checkpoint", "c", "--data", str(tmp_path)]).data == f"folder:{tmp_path}"
    assert _parser("eval").parse_args(["--checkpoint", "c", "--data", f"folder:{tmp_path}"]).data == f"folder:{tmp_path}"
    assert _parser("data").parse_args([str(tmp_path)]).dataset == f"folder:{tmp_path}"
    assert _parser("eval").parse_args(["--checkpoint", "c", "--data", "cifar10"]).data == "cifar10"


def test_json_output_of_data_and_convert(checkpoint, tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / "x.png")
    assert main(["data", str(tmp_path / "imgs"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and report["class_names"] == ["a", "b"]
    assert main(["convert", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "t.safetensors"), "--to", "timm",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source_format"] == "vitlab" and (tmp_path / "t.safetensors").is_file()
