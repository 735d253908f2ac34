"""`vitlab study NAME`: run one of the paper's experiments and write results.csv, its figure and REPORT.md.

    vitlab study --list
    vitlab study posemb --quick                  # a couple of minutes on 2 CPU cores
    vitlab study data-efficiency                 # the default size: at most ~30 minutes on 2 CPU cores
    vitlab study scaling --size paper --dry-run  # the paper's grid, printed
    vitlab study pooling --jobs 2                # two runs at once, the CPU threads split between them

Running the same command again keeps the finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from . import common


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="the study (see --list)")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("--size", choices=["quick", "default", "paper"], default="default",
                        help="quick: minutes, for tests; default: at most ~30 minutes on 2 CPU cores; paper: the "
                             "paper's own grid (needs its data and accelerators)")
    parser.add_argument("--quick", dest="size", action="store_const", const="quick", help="same as --size quick")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (threads, or GPUs, split between them)")
    parser.add_argument("--data", default=None, help="with --size paper: your copy of the upstream data set")
    parser.add_argument("--dry-run", action="store_true", help="print the grid of runs and exit")
    common.add_output_args(parser, out_help="output directory (default: runs/study-NAME[-SIZE])",
                           json_help="print the results (or, with --dry-run, the grid) as JSON")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # the runner's child processes
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    from ..studies import STUDIES, get_study
    from ..studies.report import write_report
    from ..studies.runner import run_study

    if args.list:
        for study in STUDIES.values():
            print(f"{study.name:<16} {study.title} [{study.paper}]")
        return 0
    if not args.name:
        raise UsageError(f"name a study ({', '.join(STUDIES)}), or --list")
    study = get_study(args.name)
    if args.jobs < 1:
        raise UsageError(f"--jobs must be >= 1, not {args.jobs}")
    runs = study.runs(args.size)
    if args.data:
        for r in runs:
            if r.kind == "train":
                r.config["data"]["dataset"] = args.data
    if args.dry_run:
        print_grid(study, args.size, runs, as_json=args.json)
        return 0
    threads = os.environ.get("VITLAB_STUDY_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    suffix = "" if args.size == "default" else f"-{args.size}"
    out = Path(args.out or f"runs/study-{study.name}{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    rows = run_study(study, args.size, out, jobs=args.jobs, only=args.only, data=args.data,
                     log=lambda m: print(m, file=sys.stderr))
    if args.only or args.no_report or os.environ.get("RANK", "0") != "0":
        return 0
    command = "vitlab study " + " ".join(shlex.quote(a) for a in [study.name] + (
        [] if args.size == "default" else ["--size", args.size]) + (["--jobs", str(args.jobs)] if args.jobs > 1 else []))
    report = write_report(study, args.size, rows, out, command=command)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(study.summarise(rows))
        print(f"\nwrote {out / 'results.csv'}, {out / (study.name + '.png')} and {report}")
    return 0


def print_grid(study, size: str, runs, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([{"name": r.name, "kind": r.kind, "tags": r.tags, "config": r.config} for r in runs], indent=2))
        return
    print(f"{study.name} ({size}): {len(runs)} runs — {study.budget.get(size, '')}")
    for r in runs:
        if r.kind == "train":
            c = r.config
            what = (f"{c['model']['name']} {json.dumps(c['model']['overrides'], separators=(',', ':'))} | "
                    f"{c['data']['dataset']} {c['data']['train_split']} @{c['data']['image_size']}px | "
                    f"{c['optim']['name']} lr {c['optim']['lr']:g} | {c['train']['steps']} steps x {c['data']['batch_size']}")
        else:
            what = json.dumps(r.config, separators=(",", ":"))
        print(f"  {r.name:<28} {what}")
