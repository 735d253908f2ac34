"""`vitlab demo`: build a model, classify a batch of random images, print what came out."""

from __future__ import annotations

import time

import torch

from ..models import count_parameters
from . import common


def add_arguments(parser) -> None:
    parser.add_argument("--model", default="ViT-Ti/16", type=common.model_name)
    parser.add_argument("--batch-size", type=common.integer(1), default=4)
    parser.add_argument("--image-size", type=common.image_size, default=224)


def run(args) -> int:
    torch.manual_seed(0)
    model = common.named_model(args.model, image_size=args.image_size).eval()
    common.check_batch_fits(args.batch_size, 3, args.image_size)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size) * 2 - 1
    start = time.perf_counter()
    with torch.inference_mode():
        logits = model(images)
    elapsed = time.perf_counter() - start
    print(f"{args.model}: {count_parameters(args.model):,} parameters; "
          f"logits {tuple(logits.shape)} for a batch of {args.batch_size} in {elapsed * 1000:.0f} ms")
    return 0
