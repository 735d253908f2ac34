"""`vitlab study NAME`: run one of the paper's experiments and write results.csv, its figure and REPORT.md.

    vitlab study --list
    vitlab study posemb --quick                  # a couple of minutes on 2 CPU cores
    vitlab study data-efficiency --estimate      # how long each run will take on this machine
    vitlab study data-efficiency                 # the default size: at most ~75 minutes on an idle 2-core CPU
    vitlab study data-efficiency --report        # results.csv, figure and REPORT.md of the runs finished so far
    vitlab study scaling --size paper --dry-run  # the paper's grid, printed
    vitlab study pooling --jobs 2                # two runs at once, the CPU threads split between them
    vitlab study pooling --log tensorboard       # every run in TensorBoard (also mlflow, wandb), tagged

Running the same command again keeps the finished runs and resumes an interrupted one; a run whose
configuration changed since it was trained is trained again.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from ..runtime import launch_env
from . import common


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", help="the study (see --list)")
    parser.add_argument("--list", action="store_true", help="list the studies and exit")
    parser.add_argument("--size", choices=["quick", "default", "paper"], default="default",
                        help="quick: minutes, for tests; default: at most ~75 minutes on an idle 2-core CPU; paper: "
                             "the paper's own grid (needs its data and accelerators)")
    parser.add_argument("--quick", dest="size", action="store_const", const="quick", help="same as --size quick")
    parser.add_argument("--jobs", type=common.integer(1), default=1,
                        help="runs at once (threads, or GPUs, split between them)")
    parser.add_argument("--data", default=None, help="with --size paper: your copy of the upstream data set")
    parser.add_argument("--dry-run", action="store_true", help="print the grid of runs and exit")
    parser.add_argument("--log", action="append", default=[], choices=["tensorboard", "mlflow", "wandb"],
                        help="also log every run to this experiment tracker, tagged with the study and its axes "
                             "(repeatable; docs/training.md)")
    parser.add_argument("--estimate", action="store_true",
                        help="time a short probe of each architecture and print the expected time per run and in all")
    parser.add_argument("--report", action="store_true",
                        help="write results.csv, the figure and REPORT.md from the runs finished so far; train nothing")
    parser.add_argument("--cache", default=None,
                        help="results shared between studies, by configuration (default: study-cache beside --out)")
    parser.add_argument("--no-cache", action="store_true", help="neither reuse nor record shared results")
    parser.add_argument("--known-results", metavar="DIR", default=None,
                        help="finished runs exported by --export-results (docs/studies/NAME/runs for the default "
                             "size): a run whose configuration matches is taken from there, not trained again")
    parser.add_argument("--export-results", metavar="DIR", default=None,
                        help="copy each finished run's results (config, metrics, summary, result; no checkpoints) "
                             "to DIR/RUN/ and exit")
    parser.add_argument("--index", metavar="DIR", default=None,
                        help="write the table of every study's findings and verdicts into DIR/README.md, from the "
                             "reports in DIR/NAME/ (as docs/studies/ keeps them), and exit")
    common.add_output_args(parser, out_help="output directory (default: runs/study-NAME[-SIZE])",
                           json_help="print the results (or, with --dry-run, the grid) as JSON")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # the runner's child processes
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)


def run(args) -> int:
    from ..studies import STUDIES, get_study
    from ..studies.runner import default_cache, planned_runs, run_study
    from ..training.tracking import not_installed

    if args.list:
        for study in STUDIES.values():
            print(f"{study.name:<16} {study.title} [{study.paper}]")
        return 0
    if args.index:
        from ..studies.report import write_index

        if not Path(args.index).is_dir():
            raise UsageError(f"--index {args.index}: not a folder")
        print(f"wrote {write_index(STUDIES, Path(args.index))}")
        return 0
    if not args.name:
        raise UsageError(f"name a study ({', '.join(STUDIES)}), or --list")
    study = get_study(args.name)
    args.log = list(dict.fromkeys(args.log))
    missing = not_installed(args.log)
    if missing:  # before any work
        raise UsageError(f"--log: {missing[0]}")
    suffix = "" if args.size == "default" else f"-{args.size}"
    out = Path(args.out or f"runs/study-{study.name}{suffix}")
    if args.dry_run:
        print_grid(study, args.size, planned_runs(study, args.size, out, args.data), as_json=args.json)
        return 0
    threads = os.environ.get("VITLAB_STUDY_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    if args.estimate:
        return print_estimate(study, args, out)
    if args.report:
        return report(study, args, out)
    if args.export_results:
        return export(study, args, out)
    out.mkdir(parents=True, exist_ok=True)
    cache = None if args.no_cache else Path(args.cache) if args.cache else default_cache(out)
    known = Path(args.known_results) if args.known_results else None
    if known is not None and not known.is_dir():
        raise UsageError(f"--known-results {known}: not a folder")
    rows = run_study(study, args.size, out, jobs=args.jobs, only=args.only, data=args.data, cache=cache,
                     known=known, trackers=args.log, log=lambda m: print(m, file=sys.stderr))
    if args.only or args.no_report or not launch_env().is_main:
        return 0
    write(study, args, out, rows, planned=len(rows))
    return 0


def command_of(study, args) -> str:
    return "vitlab study " + " ".join(shlex.quote(a) for a in [study.name] + (
        [] if args.size == "default" else ["--size", args.size]) + (["--jobs", str(args.jobs)] if args.jobs > 1 else []))


def write(study, args, out: Path, rows: list[dict], *, planned: int) -> None:
    from ..studies.report import write_report

    report_path = write_report(study, args.size, rows, out, command=command_of(study, args), planned=planned)
    if args.json:
        common.print_json({"results": rows})
    else:
        print(study.summarise(rows))
        print(f"\nwrote {out / 'results.csv'}, {out / (study.name + '.png')} and {report_path}")


def report(study, args, out: Path) -> int:
    from ..studies.runner import finished_rows

    rows, planned = finished_rows(study, args.size, out, args.data)
    if not rows:
        raise UsageError(f"no run of study {study.name} ({args.size}) has finished in {out} yet")
    write(study, args, out, rows, planned=planned)
    return 0


def export(study, args, out: Path) -> int:
    from ..studies.runner import export_results, finished_rows

    rows, planned = finished_rows(study, args.size, out, args.data)
    count = export_results(rows, out, Path(args.export_results))
    print(f"exported {count} of {planned} runs to {args.export_results}")
    return 0


def print_estimate(study, args, out: Path) -> int:
    import torch

    from ..studies.estimate import estimate_runs, format_estimates
    from ..studies.runner import planned_runs, read_result, threads_per_job

    previous = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(args.jobs))  # probe with the threads each run will have
    try:
        runs = planned_runs(study, args.size, out, args.data)
        estimates = estimate_runs(runs, progress=lambda m: print(m, file=sys.stderr))
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
    done = {r.name for r in runs if read_result(out, r) is not None}
    if args.json:
        common.print_json({"estimates": [vars(e) | {"finished": e.run in done} for e in estimates]})
    else:
        print(format_estimates(estimates, done=done, threads=threads, jobs=args.jobs))
    return 0


def print_grid(study, size: str, runs, *, as_json: bool) -> None:
    if as_json:
        common.print_json({"runs": [{"name": r.name, "kind": r.kind, "tags": r.tags, "config": r.config} for r in runs]})
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
