"""`vitlab vtab`: the VTAB-1k protocol over tasks given as local data sets, with group and overall means."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from ..checkpoints.adapt import reset_head
from ..vtab import VTAB_TASKS, VTABSettings, format_table, run_task, task_group
from . import common, evalargs

DEFAULTS = VTABSettings()


def add_arguments(parser) -> None:
    evalargs.add_model_arguments(parser)
    parser.add_argument("--task", action="append", default=[], metavar="NAME=SPEC",
                        help=f"a VTAB task and its data set spec, e.g. dtd=folder:/data/vtab/dtd (repeatable); "
                             f"tasks: {', '.join(VTAB_TASKS)}")
    parser.add_argument("--tasks", default=None, metavar="FILE",
                        help="YAML/JSON mapping task name -> data set spec (or {data, train_split, test_split})")
    common.add_data_root(parser)
    parser.add_argument("--train-split", default="train", help="split the 1000 training images come from")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--steps", type=common.integer(1), default=DEFAULTS.steps)
    parser.add_argument("--lr", type=common.number(0, above=True), default=DEFAULTS.lr)
    parser.add_argument("--batch-size", type=common.integer(1), default=DEFAULTS.batch_size)
    parser.add_argument("--micro-batch-size", type=common.integer(1), default=None,
                        help="accumulate gradients over micro-batches of this size (to fit memory)")
    parser.add_argument("--warmup-steps", type=common.integer(0), default=DEFAULTS.warmup_steps)
    parser.add_argument("--flip", action="store_true", help="random horizontal flips while fine-tuning")
    parser.add_argument("--seed", type=common.seed, default=DEFAULTS.seed)
    parser.add_argument("--eval-batch-size", type=common.integer(1), default=256)
    common.add_output_args(parser, out_help="where to write vtab.json (default: CHECKPOINT/vtab)")


def task_specs(args) -> dict[str, dict]:
    """name -> {"data", "train_split", "test_split"} from --tasks FILE and --task NAME=SPEC."""
    specs = {}
    if args.tasks:
        path = Path(args.tasks)
        try:
            table = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise common.UsageError(f"--tasks {path}: cannot read the task list: {e}") from None
        if not isinstance(table, dict):
            raise common.UsageError(f"--tasks {path}: expected a mapping of task name -> data set spec")
        for name, value in table.items():
            specs[name] = value if isinstance(value, dict) else {"data": value}
    for item in args.task:
        name, sep, spec = item.partition("=")
        if not sep or not spec:
            raise common.UsageError(f"--task {item!r}: expected NAME=SPEC, e.g. dtd=folder:/data/vtab/dtd")
        specs[name.strip()] = {"data": spec.strip()}
    if not specs:
        raise common.UsageError("give the tasks with --task NAME=SPEC or --tasks FILE")
    for name, spec in specs.items():
        try:
            task_group(name)
        except ValueError as e:  # an unknown task name
            raise common.UsageError(f"--task {name}: {e}") from None
        if "data" not in spec:
            raise common.UsageError(f"task {name}: no 'data' spec")
        spec["data"] = common.data_spec(str(spec["data"]))
        spec.setdefault("train_split", args.train_split)
        spec.setdefault("test_split", args.test_split)
    return {name.lower(): spec for name, spec in specs.items()}


def run(args) -> int:
    d, precision = evalargs.runtime_of(args)
    settings = VTABSettings(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                            micro_batch_size=args.micro_batch_size, warmup_steps=min(args.warmup_steps, args.steps),
                            image_size=args.image_size, flip=args.flip, seed=args.seed)
    out = evalargs.output_dir(args, args.checkpoint, "vtab") / "vtab.json"
    done = json.loads(out.read_text())["tasks"] if out.exists() else {}
    results = {}
    for name, spec in task_specs(args).items():
        key = dict(spec, settings=dataclasses.asdict(settings), checkpoint=str(args.checkpoint))
        if name in done and done[name].get("key") == key:
            print(f"{name}: already done ({out}), test accuracy {100 * done[name]['test_accuracy']:.2f}%")
            results[name] = done[name]
            continue
        print(f"{name} ({task_group(name)}): {spec['data']}")
        model = evalargs.load_model(args.checkpoint, image_size=args.image_size)
        in_chans = model.config.in_chans
        common.check_batch_fits(args.batch_size, in_chans, model.config.image_size)  # drawn whole each step
        train = evalargs.build_dataset(spec["data"], spec["train_split"], root=args.data_root, in_chans=in_chans)
        test = evalargs.build_dataset(spec["data"], spec["test_split"], root=args.data_root, in_chans=in_chans)
        reset_head(model, train.num_classes)
        results[name] = dict(run_task(model, train, test, settings, device=d.device, precision=precision,
                                      eval_batch_size=args.eval_batch_size, work_dir=out.parent), key=key)
        r = results[name]
        print(f"{name}: val {100 * r['val_accuracy']:.2f}%  test {100 * r['test_accuracy']:.2f}%")
        evalargs.write_json(out, {"tasks": {**done, **results}})  # after every task, so a long run can resume
    if args.json:
        common.print_json({"tasks": results})
    else:
        print(format_table(results))
        print(f"wrote {out}")
    return 0
