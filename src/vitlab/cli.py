"""The `vitlab` command. Each sub-command lives in its own module under vitlab.commands.

Every expected failure (a `vitlab.errors.VitlabError`, a missing or unwritable file, ...) reaches the user as
one line on stderr, `vitlab COMMAND: error: ...`, and exit code 2; `VITLAB_DEBUG=1` adds the traceback for a
bug report. Ctrl-C exits with 130. Anything else is a bug and shows its traceback. An argument argparse refuses
(an unknown option, a value its type refuses) is the same one line, naming the option.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings

from . import __version__
from .errors import one_line, user_message

# name -> (module under vitlab.commands, one-line help). Each module defines add_arguments(parser) and run(args).
COMMANDS = {
    "models": ("models", "list the registered models with parameters, GFLOPs and tokens"),
    "data": ("data", "look at a data source: its size, classes, and (with --scan) its unreadable files"),
    "train": ("train", "pre-train or fine-tune a model from a recipe or a config file"),
    "recipes": ("recipes", "list the training recipes that ship with vitlab (run one: vitlab train NAME)"),
    "eval": ("evaluate", "top-1/top-5 (and ImageNet ReaL) accuracy of a checkpoint on a data set"),
    "fewshot": ("fewshot", "few-shot linear evaluation on frozen features"),
    "vtab": ("vtab", "the VTAB-1k transfer protocol on local data sets"),
    "predict": ("predict", "top-5 labels for image files"),
    "inspect": ("inspect", "the paper's figures of what a ViT learned"),
    "convert": ("convert", "convert a checkpoint between vitlab, hf, timm and npz formats"),
    "download": ("download", "fetch pre-trained checkpoints (hf-hub:, URLs, official names) into the cache"),
    "bench": ("bench", "measure vitlab's training and inference throughput"),
    "serve": ("serve", "a web page and a JSON API in front of a checkpoint (pip install 'vitlab[serve]')"),
    "study": ("study", "run one of the paper's experiments: its grid of runs, results, figure and report"),
}
# name -> what to run instead, for commands that are gone
REMOVED = {
    "demo": "it classified random tensors; try a trained model instead: `make main`, then "
            "`vitlab serve --checkpoint runs/fashion-mnist` (or `vitlab predict --checkpoint runs/fashion-mnist "
            "IMAGE`)",
}


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose refusal of a bad argument is one line (not the usage text first), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = Parser(prog="vitlab", description="The Vision Transformer, whole.")
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # import only the module that will run
            importlib.import_module(f"vitlab.commands.{module}").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in REMOVED:
        print(f"vitlab {command}: error: removed: {REMOVED[command]}", file=sys.stderr)
        return 2
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed sub-command; expected failures become one line on stderr and exit code 2."""
    prefix = f"vitlab {args.command}"
    try:
        module = importlib.import_module(f"vitlab.commands.{COMMANDS[args.command][0]}")
        with one_line_warnings(prefix):
            return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e)
        if message is None:
            raise  # a bug: keep the traceback
        if debug():
            traceback.print_exc()
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def one_line_warnings(prefix: str):
    """Warnings printed while a command runs read `vitlab COMMAND: warning: ...`, one line each."""
    original = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{prefix}: warning: {one_line(str(message))}\n"
    try:
        yield
    finally:
        warnings.formatwarning = original


def debug() -> bool:
    return os.environ.get("VITLAB_DEBUG", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
