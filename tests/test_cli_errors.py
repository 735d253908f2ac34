"""Bad input through the real command line: every expected failure is one line on stderr and exit code 2.

Most cases run `vitlab.cli.main` in this process (the same function the `vitlab` entry point calls); a few run
`python -m vitlab` in a subprocess to show the installed entry point behaves the same.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny

import vitlab
from vitlab.cli import build_parser, main


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
    assert _parser("inspect").parse_args(["--model", "ViT-Ti/16", "--out", "o"]).device == "auto"
    assert _parser("bench").parse_args(["--task", "train"]).measure == "train"
    assert "--task" not in _parser("bench").format_help()
    assert _parser("bench").parse_args(["--precision", "auto"]).precision == "auto"


def test_a_bare_directory_is_an_image_folder(tmp_path):
    assert _parser("eval").parse_args(["--checkpoint", "c", "--data", str(tmp_path)]).data == f"folder:{tmp_path}"
    assert _parser("eval").parse_args(["--checkpoint", "c", "--data", f"folder:{tmp_path}"]).data == f"folder:{tmp_path}"
    assert _parser("data").parse_args([str(tmp_path)]).dataset == f"folder:{tmp_path}"
    assert _parser("eval").parse_args(["--checkpoint", "c", "--data", "cifar10"]).data == "cifar10"


def test_version_is_printed_and_every_json_output_names_it(capsys):
    import vitlab

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"vitlab {vitlab.__version__}\n"
    for argv in (["models", "--filter", "ViT-Ti/16", "--json"], ["models", "--pretrained", "--filter", "R50", "--json"],
                 ["study", "pooling", "--quick", "--dry-run", "--json"]):
        assert main(argv) == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["vitlab_version"] == vitlab.__version__ and len(printed) == 2, argv  # and the result


def test_json_output_of_data_and_convert(checkpoint, tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / "x.png")
    assert main(["data", str(tmp_path / "imgs"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["samples"] == 2 and report["class_names"] == ["a", "b"] and report["vitlab_version"]
    assert main(["convert", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "t.safetensors"), "--to", "timm",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["source_format"] == "vitlab" and (tmp_path / "t.safetensors").is_file()


# ---- damaged checkpoints, through every command that reads one ------------------------------------------
def _damaged(kind: str, good, root):
    """A checkpoint damaged in one of the ways a user meets: returns (path, what the message must name)."""
    import shutil

    path = root / kind
    if kind == "not-a-checkpoint":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
        return path, path
    if kind == "corrupt.safetensors":
        path.write_bytes((good / "model.safetensors").read_bytes()[:100])
        return path, path
    shutil.copytree(good, path)
    if kind == "truncated-folder":
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        return path, weights
    if kind == "no-weights":
        (path / "model.safetensors").unlink()
        return path, path / "model.safetensors"
    if kind == "config-is-a-list":
        (path / "config.json").write_text("[1, 2, 3]")
        return path, path / "config.json"
    raise ValueError(kind)


DAMAGE = ["not-a-checkpoint", "corrupt.safetensors", "truncated-folder", "no-weights", "config-is-a-list"]


@pytest.mark.parametrize("command", [*EVAL_COMMANDS, "convert"])
def test_damaged_checkpoints(command, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for kind in DAMAGE:
        path, named = _damaged(kind, checkpoint, tmp_path)
        extra = ["--out", tmp_path / "o", "--to", "hf"] if command == "convert" else EVAL_COMMANDS[command]
        refused(capsys, [command, "--checkpoint", path, *extra], named)


def test_config_json_list_in_a_run_directory(checkpoint, tmp_path, capsys):
    import shutil

    step = tmp_path / "run" / "checkpoints" / "step-00000004"
    shutil.copytree(checkpoint, step)
    (step / "config.json").write_text("[]")
    refused(capsys, ["predict", "--checkpoint", tmp_path / "run", "x.png"], "config.json")


# ---- data ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """An image folder with the checkpoint's 5 classes, one 32 px image each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("five")
    for c in range(5):
        (root / f"c{c}").mkdir()
        Image.new("RGB", (32, 32), (40 * c, 0, 0)).save(root / f"c{c}" / "a.png")
    return root


def test_missing_data_folder(checkpoint, tmp_path, capsys):
    for command in ("eval", "fewshot", "inspect"):
        extra = ["--out", tmp_path / "o"] if command == "inspect" else []
        refused(capsys, [command, "--checkpoint", checkpoint, "--data", f"folder:{tmp_path / 'missing'}", *extra],
                tmp_path / "missing")
    refused(capsys, ["data", f"folder:{tmp_path / 'missing'}"], tmp_path / "missing")


def test_missing_real_labels(checkpoint, five_classes, tmp_path, capsys):
    refused(capsys, ["eval", "--checkpoint", checkpoint, "--data", five_classes, "--split", "train", "--num-workers", "0",
                     "--real", tmp_path / "real.json", "--out", tmp_path / "o"], tmp_path / "real.json")


def test_truncated_fashion_mnist(tmp_path, capsys):
    import gzip

    root = tmp_path / "fmnist"
    root.mkdir()
    images = gzip.compress(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 784 * 10)
    labels = gzip.compress(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + bytes(range(10)))
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(images[: len(images) // 2])  # cut mid-stream
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)
    refused(capsys, ["data", "fashion_mnist", "--split", "test", "--data-root", root], "t10k-images-idx3-ubyte.gz")


# ---- training configs: refused by `vitlab train --check`, before any work -----------------------------
@pytest.fixture
def config(tmp_path):
    import training_support as ts

    return ts.write_config(tmp_path / "c.yaml", ts.tiny_config(tmp_path / "run"))


BAD_SETTINGS = [  # --set value, what the message names
    (["data.seed=-1"], "data.seed"),
    (["data.split_seed=-2"], "data.split_seed"),
    (["seed=-1"], "seed"),
    (["optim.eps=0"], "optim.eps"),
    (["optim.eps=-1e-8"], "optim.eps"),
    (["optim.name=sgd", "optim.momentum=-0.5"], "optim.momentum"),
    (["optim.name=sgd", "optim.momentum=0", "optim.nesterov=true"], "optim.nesterov"),
    (["optim.weight_decay=nan"], "optim.weight_decay = nan"),
    (["optim.lr=inf"], "optim.lr = inf"),
    (["data.crop_fraction=nan"], "data.crop_fraction"),
    (["model.overrides.width=64.5"], "model.overrides.width must be int"),
    (["model.overrides.image_size=32"], "data.image_size"),
    (["model.overrides.in_chans=3"], "data.in_chans"),
    (["data.image_size=8192", "data.batch_size=64"], "GiB"),
]


@pytest.mark.parametrize("settings,named", BAD_SETTINGS, ids=[s[0][-1] for s in BAD_SETTINGS])
def test_bad_settings_are_refused_by_check(settings, named, config, capsys):
    argv = ["train", config, "--check"] + [a for s in settings for a in ("--set", s)]
    line = refused(capsys, argv, named)
    if named == "GiB":  # the estimate says what it needs, what there is, and what to change
        assert "needs at least" in line and "this machine has" in line and "data.batch_size" in line


def test_init_that_is_not_a_checkpoint(config, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not weights")
    (tmp_path / "folder").mkdir()
    for init in (tmp_path / "notes.txt", tmp_path / "folder", tmp_path / "missing"):
        refused(capsys, ["train", config, "--check", "--set", f"model.init={str(init)!r}"], "model.init", init)


def test_config_files_that_are_not_tables_or_not_utf8(tmp_path, capsys):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    refused(capsys, ["train", tmp_path / "list.yaml", "--check"], "list.yaml", "top level")
    (tmp_path / "latin1.toml").write_bytes("run_dir = 'caf\xe9'\n".encode("latin-1"))
    refused(capsys, ["train", tmp_path / "latin1.toml", "--check"], "latin1.toml", "UTF-8")
    (tmp_path / "a.toml").write_text('base = "b.toml"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    refused(capsys, ["train", tmp_path / "a.toml", "--check"], "cycle")
    (tmp_path / "c.toml").write_text('base = "nowhere.toml"\n')
    refused(capsys, ["train", tmp_path / "c.toml", "--check"], "nowhere.toml")


def test_resuming_a_different_architecture(config, capsys):
    assert main(["train", str(config), "--set", "train.steps=1", "--set", "train.checkpoint_every=1"]) == 0
    capsys.readouterr()
    for argv in (["--check"], []):
        refused(capsys, ["train", config, *argv, "--set", "model.overrides.width=64", "--set", "model.overrides.depth=1"],
                "width 32 there, 64 here", "depth 2 there, 1 here")
    # dropout rates may change on resume: not architecture
    assert main(["train", str(config), "--check", "--set", "model.overrides.drop_path=0.1"]) == 0


# ---- run directories (issue 13 section 4) ---------------------------------------------------------------
def _trained(config, capsys, steps=2):
    assert main(["train", str(config), "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=1"]) == 0
    capsys.readouterr()
    return Path(yaml_load(config)["run_dir"]) / "checkpoints"


def yaml_load(path):
    import yaml

    return yaml.safe_load(Path(path).read_text())


def test_damaged_optimizer_state(config, capsys):
    checkpoints = _trained(config, capsys)
    newest = sorted(checkpoints.iterdir())[-1]
    (newest / "optimizer.pt").write_bytes(b"not a torch file")
    # the newest is damaged: the run goes on from the older one, saying so
    from vitlab.training.checkpointing import DamagedCheckpointWarning

    with pytest.warns(DamagedCheckpointWarning, match="optimizer.pt"):
        assert main(["train", str(config), "--set", "train.steps=3", "--set", "train.checkpoint_every=1"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    kept = sorted(p.name for p in checkpoints.iterdir())
    for step in sorted(checkpoints.iterdir()):
        (step / "optimizer.pt").write_bytes(b"")  # every one damaged: refused, nothing deleted
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refused(capsys, ["train", config, "--set", "train.steps=4"], "reads back whole")
    assert sorted(p.name for p in checkpoints.iterdir()) == kept


def test_a_second_trainer_is_refused_naming_the_holder(config, tmp_path):
    from vitlab.training.checkpointing import RunLock

    with RunLock(tmp_path / "run"):
        result = subprocess.run([sys.executable, "-m", "vitlab", "train", str(config)], capture_output=True,
                                text=True, timeout=300, env=dict(os.environ, VITLAB_DEBUG=""))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"pid {os.getpid()}" in result.stderr and result.stderr.startswith("vitlab train: error: ")


def test_a_full_disk_is_one_line(config, capsys, monkeypatch):
    import errno

    from vitlab.training import checkpointing

    def full(obj, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpointing.torch, "save", full)
    refused(capsys, ["train", config, "--set", "train.steps=1"], "optimizer.pt", "disk full", "intact")


# ---- data edge cases (issue 13 section 5): skipped, named and counted; never a traceback -----------------
def test_odd_files_in_an_image_folder_are_skipped_and_counted(tmp_path, capsys):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / cls / "good.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a" / "png-inside.jpg", format="PNG")  # read by content
    (tmp_path / "imgs" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    os.mkfifo(tmp_path / "imgs" / "b" / "pipe.png")  # never opened: it would hang the scan
    code = main(["data", str(tmp_path / "imgs"), "--scan", "--json", "--image-size", "8"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    report = json.loads(captured.out)
    assert report["decoded"] == 3 and any("broken.png" in name for name in report["bad_files"])


def test_a_shard_with_a_non_utf8_label_is_read_past(tmp_path, capsys):
    import io
    import tarfile

    from PIL import Image

    def member(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for i, label in enumerate([b"0", b"\xff\xfe", b"1"]):
            member(tar, f"{i:03d}.png", png.getvalue())
            member(tar, f"{i:03d}.cls", label)
    (tmp_path / "classes.txt").write_text("zero\none\n")
    code = main(["data", f"shards:{tmp_path}/s-000.tar", "--scan", "--json", "--image-size", "8"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert json.loads(captured.out)["decoded"] == 2


def test_a_warning_is_one_line_and_the_formatter_is_restored(monkeypatch, capsys):
    import warnings

    from vitlab.commands import models

    def warns(args):
        warnings.warn("something to know\nover two lines", UserWarning)
        return 0

    monkeypatch.setattr(models, "run", warns)
    original = warnings.formatwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", lambda m, c, f, l, file=None, line=None:
                            sys.stderr.write(warnings.formatwarning(m, c, f, l)))
        assert main(["models"]) == 0
    assert capsys.readouterr().err == "vitlab models: warning: something to know over two lines\n"
    assert warnings.formatwarning is original


def test_models_setting_refused(capsys):
    refused(capsys, ["models", "--set", "width=64.5"], "width", "64.5")


def test_real_entry_point_refuses_a_bad_config(config):
    result = subprocess.run([sys.executable, "-m", "vitlab", "train", str(config), "--check", "--set",
                             "optim.weight_decay=nan"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, VITLAB_DEBUG=""))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "vitlab train: error: optim.weight_decay = nan is not a finite number; give a real number\n"


def test_fine_tuning_too_large_is_refused_before_loading(config, capsys):
    checkpoints = _trained(config, capsys, steps=1)
    refused(capsys, ["train", config, "--check", "--set", f"model.init={str(checkpoints.parent)!r}", "--set",
                     "run_dir='elsewhere'", "--set", "data.image_size=8192"], "needs at least", "GiB")


def test_resuming_onto_another_init_architecture_is_refused_by_the_trainer(config, tmp_path, capsys):
    """With model.init the architecture is the checkpoint's, known only once loaded: the Trainer compares it."""
    for width in (32, 64):
        model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, width=width, image_size=16, in_chans=1))
        vitlab.save_pretrained(model, tmp_path / f"init-{width}")
    first = ["--set", f"model.init={str(tmp_path / 'init-32')!r}", "--set", "model.overrides={}", "--set", "train.steps=1"]
    assert main(["train", str(config), *first, "--set", "train.checkpoint_every=1"]) == 0
    capsys.readouterr()
    refused(capsys, ["train", config, "--set", f"model.init={str(tmp_path / 'init-64')!r}", "--set", "model.overrides={}",
                     "--set", "train.steps=2"], "width 32 there, 64 here")


def test_an_error_from_a_loader_worker_keeps_only_its_message():
    from vitlab.data import DataError
    from vitlab.errors import user_message

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in <module>\nvitlab.data.errors.DataError: /data/x.png: unreadable')
    assert user_message(wrapped) == "/data/x.png: unreadable"
    assert user_message(TypeError("a bug")) is None


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--model", "ViT-Ti/16", "--batch-size", "2"]])
def test_a_removed_command_says_what_to_run_instead(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitlab demo: error: removed:") and "vitlab serve --checkpoint" in err
    assert len(err.splitlines()) == 1
    assert "demo" not in build_parser(None).format_help()  # gone from the command list


# ---- the rest of the audit: each a one-line refusal --------------------------------------------------------
def test_the_run_lock_never_follows_a_symbolic_link(config, tmp_path, capsys):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run_dir = Path(yaml_load(config)["run_dir"])
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").symlink_to(target)
    refused(capsys, ["train", config, "--set", "train.steps=1"], ".lock", "symbolic link")
    assert target.read_text() == "keep me\n"


def test_resuming_with_another_optimiser_is_refused(config, capsys):
    _trained(config, capsys, steps=1)
    refused(capsys, ["train", config, "--set", "train.steps=2", "--set", "optim.name=sgd"],
            "optimizer.pt", "Adam/AdamW", "SGD")


def test_an_optimizer_file_that_needs_unpickling_is_refused(config, capsys):
    import argparse
    import hashlib

    import torch

    newest = sorted(_trained(config, capsys, steps=1).iterdir())[-1]
    torch.save({"state": argparse.Namespace(x=1)}, newest / "optimizer.pt")  # consistent with its manifest:
    manifest = json.loads((newest / "manifest.json").read_text())
    data = (newest / "optimizer.pt").read_bytes()
    manifest["files"]["optimizer.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    refused(capsys, ["train", config, "--set", "train.steps=2"], "optimizer.pt", "unpickle")


def test_a_chain_of_1200_base_configs_is_refused(tmp_path, capsys):
    for i in range(1200):
        (tmp_path / f"c{i}.toml").write_text(f'base = "c{i + 1}.toml"\n' if i < 1199 else "seed = 1\n")
    refused(capsys, ["train", tmp_path / "c0.toml", "--check"], "c0.toml", "deep")


def test_a_malformed_sizes_json_beside_shards(tmp_path, capsys):
    import io
    import tarfile

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    with tarfile.open(tmp_path / "s-000.tar", "w") as tar:
        for name, data in (("0.png", png.getvalue()), ("0.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "classes.txt").write_text("zero\n")
    for text in ("{not json", "[1, 2]", '{"s-000.tar": "many"}'):
        (tmp_path / "sizes.json").write_text(text)
        refused(capsys, ["data", f"shards:{tmp_path}/s-000.tar"], "sizes.json")


@pytest.mark.parametrize("sidecar", ["[1]", '{"label_names": 5, "preprocessing": {}, "in_chans": 3, "image_hw": [8, 8]}',
                                     '{"label_names": [], "preprocessing": {}, "in_chans": "x", "image_hw": [8, 8]}',
                                     '{"label_names": [], "preprocessing": {}, "in_chans": 3, "image_hw": "abc"}',
                                     '{"label_names": [], "preprocessing": 7, "in_chans": 3, "image_hw": [8, 8]}'])
def test_a_malformed_onnx_sidecar(sidecar, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("uvicorn")
    (tmp_path / "m.onnx").write_bytes(b"not read: the sidecar is checked first")
    (tmp_path / "m.json").write_text(sidecar)
    refused(capsys, ["serve", "--onnx", tmp_path / "m.onnx"], "m.json")


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_convert_and_serve_say_how_to_install_the_onnx_extras(missing, checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` fails as if it were not installed
    refused(capsys, ["convert", "--checkpoint", checkpoint, "--out", tmp_path / "m.onnx", "--to", "onnx",
                     "--quantize", "int8"], f"{missing} is not installed; pip install 'vitlab[onnx]'")
    if missing == "onnxruntime" and all(importlib.util.find_spec(m) for m in ("uvicorn", "fastapi")):
        (tmp_path / "m.onnx").write_bytes(b"not read: onnxruntime is missing")
        (tmp_path / "m.json").write_text('{"label_names": [], "preprocessing": {}, "in_chans": 3, "image_hw": [8, 8]}')
        refused(capsys, ["serve", "--onnx", tmp_path / "m.onnx"], "onnxruntime is not installed; pip install")


def test_mae_is_checked_against_the_model_as_built(config, tmp_path, capsys):
    """From model.init the architecture is the checkpoint's: MAE cannot run an axial or relative-posemb ViT on a
    subset of patches, and --check says so (it used to pass, and the first step crashed). MPP keeps every patch."""
    for variant in ({"attention": "axial"}, {"posemb": "relative"}):
        model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, image_size=16, in_chans=1, **variant))
        init = vitlab.save_pretrained(model, tmp_path / next(iter(variant.values())))
        for check in (["--check"], []):
            refused(capsys, ["train", config, *check, "--set", "objective.name=mae", "--set",
                             f"model.init={str(init)!r}", "--set", "model.overrides={}"], "model.init", "mae",
                    next(iter(variant.values())))


@pytest.mark.parametrize("objective", ["mae", "mpp"])
def test_self_supervision_of_a_bit_resnet_is_refused(objective, config, capsys):
    refused(capsys, ["train", config, "--check", "--set", f"objective.name={objective}", "--set",
                     "model.name='BiT-R50x1'", "--set", "model.overrides={}"], "BiT", "no patches")
