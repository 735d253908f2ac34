"""`vitlab models`: the registry as a table."""

from __future__ import annotations

from ..models import MODELS, count_flops, count_parameters, list_models, model_config, num_tokens
from . import common


def add_arguments(parser) -> None:
    parser.add_argument("--filter", default="", help="show only names containing this text (any case)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a model setting for every ViT listed, e.g. --set posemb=relative --set "
                             "attention=axial (repeatable; BiT ResNets are then left out)")
    parser.add_argument("--pretrained", action="store_true",
                        help="list the published checkpoints load_pretrained knows by name instead")


def parse_settings(texts: list[str]) -> dict:
    from ..training.config import parse_override

    settings = {}
    for text in texts:
        path, value = parse_override(text)
        settings[".".join(path)] = value
    return settings


def model_rows(name_filter: str = "", overrides: dict | None = None) -> list[dict]:
    """One row per listed name; with overrides, the names whose architecture refuses them are left out (an error
    only if every name does)."""
    overrides = overrides or {}
    rows, refusals = [], []
    for name in list_models():
        if name_filter.lower() not in name.lower() or (overrides and MODELS[name].get("bit")):
            continue
        try:
            cfg = model_config(name, **overrides)
        except ValueError as e:
            if not overrides:
                raise
            refusals.append(e)
            continue
        rows.append({
            "name": name,
            "params": count_parameters(name, **overrides),
            "gflops_224": count_flops(cfg, 224) / 1e9,
            "gflops_384": count_flops(cfg, 384) / 1e9,
            "tokens_224": num_tokens(cfg, 224),
            "tokens_384": num_tokens(cfg, 384),
        })
    if refusals and not rows:
        raise refusals[0]
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'model':<16} {'params':>13} {'GFLOPs@224':>11} {'GFLOPs@384':>11} {'tokens@224':>11} {'tokens@384':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        tokens = [("-" if t is None else str(t)) for t in (r["tokens_224"], r["tokens_384"])]
        lines.append(f"{r['name']:<16} {r['params']:>13,} {r['gflops_224']:>11.2f} {r['gflops_384']:>11.2f} "
                     f"{tokens[0]:>11} {tokens[1]:>11}")
    return "\n".join(lines)


def pretrained_rows(name_filter: str = "") -> list[dict]:
    from ..checkpoints.pretrained import PRETRAINED

    return [{"name": p.name, "source": p.source, "resolution": p.resolution, "imagenet_top1": p.accuracy,
             "url": p.url} for p in PRETRAINED if name_filter.lower() in p.name.lower()]


def format_pretrained(rows: list[dict]) -> str:
    header = f"{'px':>4} {'top-1':>6}  {'source':<50} name"
    lines = [header, "-" * 100]
    for r in rows:
        top1 = "-" if r["imagenet_top1"] is None else f"{r['imagenet_top1']:.2f}"
        lines.append(f"{r['resolution']:>4} {top1:>6}  {r['source']:<50} {r['name']}")
    lines.append("top-1: ImageNet accuracy as the publishers report it (for a pre-trained checkpoint: after fine-tuning "
                 "at 384 px).\nAlso accepted: a bare ViT-B_16 (= imagenet21k/ViT-B_16), the AugReg model names (Ti_16, "
                 "R26_S_32, ...) for the recommended\nImageNet-21k checkpoint, any AugReg file stem, hf-hub:ORG/NAME and "
                 "http(s) URLs.")
    return "\n".join(lines)


def run(args) -> int:
    if args.pretrained:
        rows = pretrained_rows(args.filter)
        if args.json:
            common.print_json({"checkpoints": rows})
        else:
            print(format_pretrained(rows))
        return 0
    from ..errors import UsageError
    from ..training.config import ConfigError

    try:
        rows = model_rows(args.filter, parse_settings(args.overrides))
    except (ConfigError, ValueError, TypeError) as e:  # an unknown or impossible setting
        raise UsageError(str(e)) from None
    if args.json:
        common.print_json({"models": rows})
    else:
        print(format_table(rows))
    return 0
