"""`vitlab train RECIPE|CONFIG [--set key=value ...]`: pre-train or fine-tune; the same command again resumes.

RECIPE is the name of a recipe that ships with vitlab (`vitlab recipes` lists them); a config file of that
name, when there is one, wins. `--check` prints the resolved config, which can be saved, edited and trained.

Under torchrun the same command trains on every process: `torchrun --nproc-per-node N -m vitlab train CONFIG`.
"""

from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("config", metavar="RECIPE|CONFIG", help="a recipe's name (`vitlab recipes` lists them) or "
                        "a config file, .toml or .yaml (docs/training.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=3e-4 --set train.steps=1000 (repeatable)")
    parser.add_argument("--out", default=None, metavar="RUN_DIR", help="the run directory (default: the config's "
                        "run_dir); the same as --set run_dir=RUN_DIR")
    parser.add_argument("--check", action="store_true", help="check the config, print it resolved, and exit")


def run(args) -> int:
    from ..training import TrainingDiverged, load_config, train
    from ..training.config import to_yaml

    overrides = list(args.overrides) + ([f"run_dir={json.dumps(args.out)}"] if args.out else [])
    cfg = load_config(args.config, overrides)  # a bad config is refused here, before any work
    if args.check:
        print(to_yaml(cfg), end="")
        return 0
    try:
        result = train(cfg)
    except TrainingDiverged as e:
        print(f"vitlab train: {e}", file=sys.stderr)
        return 3
    if result.run_dir is not None and _is_main():
        print(result.summary())
    return 128 + int(result.interrupted_by) if result.interrupted_by is not None else 0


def _is_main() -> bool:
    from ..runtime import launch_env

    return launch_env().is_main
