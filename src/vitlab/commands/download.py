"""`vitlab download NAME...`: fetch checkpoints into the cache (for offline use later) and print their paths."""

from __future__ import annotations

from ..checkpoints.remote import resolve


def add_arguments(parser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME",
                        help="hf-hub:ORG/NAME[@REVISION], an http(s) URL, or an official name "
                             "(`vitlab models --pretrained` lists them)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    for name in args.names:
        print(resolve(name, progress=False if args.no_progress else None))
    return 0
