"""`vitlab models`: the registry as a table."""

from __future__ import annotations

import json

from ..models import count_flops, count_parameters, list_models, model_config, num_tokens


def add_arguments(parser) -> None:
    parser.add_argument("--filter", default="", help="show only names containing this text (any case)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def model_rows(name_filter: str = "") -> list[dict]:
    rows = []
    for name in list_models():
        if name_filter.lower() not in name.lower():
            continue
        cfg = model_config(name)
        rows.append({
            "name": name,
            "params": count_parameters(name),
            "gflops_224": count_flops(cfg, 224) / 1e9,
            "gflops_384": count_flops(cfg, 384) / 1e9,
            "tokens_224": num_tokens(cfg, 224),
            "tokens_384": num_tokens(cfg, 384),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'model':<16} {'params':>13} {'GFLOPs@224':>11} {'GFLOPs@384':>11} {'tokens@224':>11} {'tokens@384':>11}"
    lines = [header, "-" * len(header)]
    for r in rows:
        tokens = [("-" if t is None else str(t)) for t in (r["tokens_224"], r["tokens_384"])]
        lines.append(f"{r['name']:<16} {r['params']:>13,} {r['gflops_224']:>11.2f} {r['gflops_384']:>11.2f} "
                     f"{tokens[0]:>11} {tokens[1]:>11}")
    return "\n".join(lines)


def run(args) -> int:
    rows = model_rows(args.filter)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
