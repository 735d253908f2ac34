"""Hostile values, found by a generator: every option of every sub-command, as its argparse spec lists them.

Each option (and positional) is given, one at a time, each hostile value (0, negative, huge, NaN, not a number,
an unknown model name, a port outside 0-65535, an image size no patch size divides), on top of the command's
minimal valid arguments. The command must end with exit code 0 (and print its result), or exit code 2 with
one line on stderr naming the option; an exception escaping `main` fails the test with the argv that raised
it. Sub-commands are discovered from the parser, so a new one fails here until it has its minimal arguments.

Everything runs in this process (torch imported once) on a tiny checkpoint, image folder and config, so a
value that is accepted finishes in well under a second.
"""

from __future__ import annotations

import os
import re
import traceback

import pytest
import torch
from conftest import tiny

import vitlab
from vitlab.cli import build_parser, main

HUGE = str(2**40)
HOSTILE = ["", "0", "-3", HUGE, "nan", "abc"]  # for an option of a type (a number, a name, a spec)
FREE_TEXT = ["", "-3", "abc"]  # for a path or other free text: empty, like an option, nothing there
ALIAS = ["abc"]  # an old spelling (--root, --amp, ...) has its new flag's type: it is tried once
BY_DEST = {  # more hostile values for options of one meaning
    "model": ["ViT-Q/99"],
    "port": ["70000", "-1"],
    "image_size": ["33"],  # divisible by no patch size
    "image_sizes": ["33"],
}
# Values that are valid but start long work: the reason each is not run.
LONG = {
    ("vtab", "--steps", HUGE): "fine-tunes for 2**40 steps",
    ("fewshot", "--seeds", HUGE): "draws 2**40 few-shot sets",
    ("bench", "--rounds", HUGE): "times 2**40 rounds",
    ("bench", "--warmup", HUGE): "runs 2**40 warm-up rounds",
    ("bench", "--repeats", HUGE): "runs 2**40 steps per round",
    ("models", "--filter", ""): "lists every model with its FLOPs (seconds)",
}


def subcommands() -> dict:
    """name -> its argparse parser, as `vitlab` builds it today."""
    top = build_parser(None)
    names = next(a for a in top._actions if a.dest == "command").choices
    return {name: next(a for a in build_parser(name)._actions if a.dest == "command").choices[name]
            for name in names}


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Tiny inputs: a checkpoint (5 classes, 32 px, patch 8), an image folder with train/test splits of those
    5 classes (and one with the 1000 training images VTAB-1k takes), one image file, a training config and a
    checkpoint file served on 127.0.0.1."""
    import training_support as ts
    from local_server import LocalServer
    from PIL import Image

    root = tmp_path_factory.mktemp("hostile")
    checkpoint = vitlab.save_pretrained(vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8)), root / "ckpt")
    for split in ("train", "test"):
        for c in range(5):
            (root / "images" / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (32, 32), (40 * c, 20 * i, 0)).save(root / "images" / split / f"c{c}" / f"{i}.png")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(root / "image.png")
    for split, n in (("train", 200), ("test", 2)):  # 5 x 200 training images, hard links to one file
        for c in range(5):
            (root / "vtab" / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                os.link(root / "image.png", root / "vtab" / split / f"c{c}" / f"{i}.png")
    config = ts.write_config(root / "config.yaml", ts.tiny_config(root / "run"))
    with LocalServer() as server:
        server.served.files["/tiny.safetensors"] = (checkpoint / "model.safetensors").read_bytes()
        yield {"checkpoint": str(checkpoint), "images": f"folder:{root / 'images'}", "vtab": f"folder:{root / 'vtab'}",
               "image": str(root / "image.png"),
               "config": str(config), "url": server.url("/tiny.safetensors"), "cache": root / "cache"}


def base_arguments(fx) -> dict[str, dict[str, list[str]]]:
    """Each sub-command's minimal valid arguments: option string (or positional dest) -> its values."""
    cpu = {"--device": ["cpu"]}
    model_args = {"--checkpoint": [fx["checkpoint"]], **cpu}
    data = {"--data": [fx["images"]], "--num-workers": ["0"]}
    return {
        "models": {"--filter": ["Ti/16"]},
        "data": {"dataset": [fx["images"]], "--image-size": ["32"]},
        "train": {"config": [fx["config"]], "--check": []},
        "recipes": {},
        "eval": {**model_args, **data, "--out": ["eval-out"]},
        "fewshot": {**model_args, **data, "--shots": ["1"], "--seeds": ["1"], "--out": ["fewshot-out"]},
        "vtab": {**model_args, "--task": [f"dtd={fx['vtab']}"], "--steps": ["1"], "--batch-size": ["4"],
                 "--warmup-steps": ["0"], "--out": ["vtab-out"]},
        "predict": {"images": [fx["image"]], **model_args},
        "inspect": {"images": [fx["image"]], **model_args, "--out": ["inspect-out"], "--figures": ["posemb"],
                    "--no-progress": []},
        "convert": {"--checkpoint": [fx["checkpoint"]], "--out": ["converted.safetensors"], "--to": ["timm"]},
        "download": {"names": [fx["url"]], "--no-progress": []},
        "bench": {"--model": ["ViT-Ti/16"], "--image-size": ["32"], "--batch-size": ["1"], "--measure": ["inference"],
                  "--rounds": ["1"], "--warmup": ["0"], "--repeats": ["1"], **cpu},
        "serve": {**model_args, "--port": ["0"]},
        "study": {"name": ["pooling"], "--quick": [], "--dry-run": []},
    }


def hostile_values(action) -> list[str]:
    from vitlab.commands.common import DeprecatedAlias

    if isinstance(action, DeprecatedAlias):
        return ALIAS
    return (FREE_TEXT if action.type is None and action.choices is None else HOSTILE) + BY_DEST.get(action.dest, [])


def valued_actions(parser):
    """The options and positionals that take a value (flags, --help and --version take none)."""
    return [a for a in parser._actions if a.nargs != 0 and a.dest != "help"]


def key_of(action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


def with_value(parser, base: dict, action, value: str) -> dict:
    """`base` with `action` given `value`, dropping what sets the same destination or excludes it."""
    excluded = {a for g in parser._mutually_exclusive_groups if action in g._group_actions for a in g._group_actions}
    drop = {key_of(a) for a in parser._actions if a is not action and (a.dest == action.dest or a in excluded)}
    return {**{k: v for k, v in base.items() if k not in drop}, key_of(action): [value]}


def argv_of(command: str, arguments: dict) -> list[str]:
    positional = [v for k, vs in arguments.items() if not k.startswith("-") for v in vs]
    options = [x for k, vs in arguments.items() if k.startswith("-") for x in (k, *vs)]
    return [command, *positional, *options]


def outcome(argv: list[str], capsys) -> tuple[object, str, str]:
    """(exit code, or the exception's traceback text; stdout; stderr) of `vitlab ARGV` run in this process."""
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - any escape is what this test looks for
        code = traceback.format_exc()
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    return code, out, err


def names(line: str, action, value: str) -> bool:
    """Whether a refusal names the option; for an option that takes a path or a name (not a number), naming
    the value it was given is as good."""
    words = {key_of(action).lstrip("-"), action.dest, action.dest.replace("_", "-")}
    takes_number = getattr(action.type, "__name__", "") in ("int", "float", "integer", "number")
    as_token = rf"(?<![\w.]){re.escape(value)}(?!\w)"
    return any(w in line for w in words) or (not takes_number and re.search(as_token, line) is not None)


def problem(command: str, argv: list[str], action, value: str, code, out: str, err: str) -> str | None:
    """What is wrong with one outcome, or None."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note: ")]
    if isinstance(code, str):
        return f"{argv}: exception escaped: {' / '.join(code.strip().splitlines()[-3:])}"
    if "Traceback" in err:
        return f"{argv}: a traceback on stderr: {err}"
    if code == 0:  # a result on stdout (serve says where it serves on stderr)
        return None if (out + err).strip() else f"{argv}: exit 0 but printed no result"
    if code != 2:
        return f"{argv}: exit code {code}, stderr: {err!r}"
    if len(lines) != 1 or not lines[0].startswith(f"vitlab {command}: error: "):
        return f"{argv}: expected one line 'vitlab {command}: error: ...', got {err!r}"
    if action is not None and not names(lines[0], action, value):
        return f"{argv}: the refusal does not name {key_of(action)}: {lines[0]!r}"
    return None


@pytest.fixture
def quick(monkeypatch):
    """Each command does all its work but two slow steps that no option here changes: `vitlab serve` binds its
    socket and closes it instead of serving, and figures are drawn but not rendered to PNG (a second each)."""
    import matplotlib.figure
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=(): [s.close() for s in sockets])
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *args, **kwargs: None)
    monkeypatch.setattr("vitlab.commands.evaluate.save_confusion_png", lambda *args, **kwargs: None)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_refuses_hostile_values_in_one_line(command, fx, quick, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VITLAB_CACHE", str(fx["cache"]))
    monkeypatch.delenv("VITLAB_OFFLINE", raising=False)
    parser = subcommands()[command]
    bases = base_arguments(fx)
    assert command in bases, f"vitlab {command} is new: give its minimal valid arguments in base_arguments()"
    base = bases[command]
    code, out, err = outcome(argv_of(command, base), capsys)
    assert code == 0, f"the minimal arguments of vitlab {command} must work: {code} {err}"
    problems = []
    for action in valued_actions(parser):
        for value in hostile_values(action):
            if (command, key_of(action), value) in LONG:
                continue
            argv = argv_of(command, with_value(parser, base, action, value))
            code, out, err = outcome(argv, capsys)
            problems.append(problem(command, argv, action, value, code, out, err))
    problems = [p for p in problems if p]
    assert not problems, f"{len(problems)} hostile arguments mishandled:\n" + "\n".join(problems)


def test_the_long_list_names_real_options():
    """Every skipped value is an option the command still has (a renamed option must not hide here)."""
    commands = subcommands()
    for command, option, _ in LONG:
        if command in commands:
            assert option in {s for a in commands[command]._actions for s in a.option_strings}, (command, option)
