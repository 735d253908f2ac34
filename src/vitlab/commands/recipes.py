"""`vitlab recipes`: the training recipes that ship with vitlab, one line each; `vitlab train NAME` runs one."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--paths", action="store_true", help="also print where each recipe's file is")


def run(args) -> int:
    from .. import recipes

    names = recipes.names()
    width = max(map(len, names))
    for name in names:
        where = f"  ({recipes.path_of(name)})" if args.paths else ""
        print(f"{name:<{width}}  {recipes.description(name)}{where}")
    return 0
