"""torch.compile of the main job's stage-1 step (PatchDropout 0.8, batch 256, bf16): compile time, then eager and
compiled steps in interleaved rounds of 5 (BENCHMARKS.md, "The main job against the CNN"). Run as:
    OMP_NUM_THREADS=1 python benchmarks/compile_step.py
"""

import time

import torch

import vitlab
from vitlab.bench import random_batch, training_step
from vitlab.training.optim import make_adamw
torch.set_num_threads(1)
def student():
    torch.manual_seed(0)
    return vitlab.create_model("ViT-Ti/16", patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4,
        classifier="gap", patch_dropout=0.8, in_chans=1, image_size=28, num_classes=10).train()
x, y = random_batch(256, 28, 10, "cpu", in_chans=1)
a = student(); b = student()
cb = torch.compile(b)
sa = training_step(a, make_adamw(a, lr=1e-3, weight_decay=0.05), x, y, "bf16", clip_grad_norm=1.0)
sb = training_step(cb, make_adamw(b, lr=1e-3, weight_decay=0.05), x, y, "bf16", clip_grad_norm=1.0)
t = time.perf_counter(); sb(); sb(); print(f"compile + 2 steps: {time.perf_counter()-t:.1f} s")
for r in range(4):
    for name, s in (("eager", sa), ("compiled", sb)):
        t = time.perf_counter()
        for _ in range(5): s()
        print(name, f"{(time.perf_counter()-t)/5*1000:.0f} ms/step", flush=True)
