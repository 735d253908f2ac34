"""Per-step cost of a distillation teacher on the main job's student (BENCHMARKS.md, "Distillation on Fashion-MNIST").

The student's training step (PatchDropout 0.8, [class] + distillation token, batch 256, bf16) and two teachers'
bf16 forwards on the same batch, timed interleaved over 5 rounds on one thread; medians. Run as in BENCHMARKS.md:
    OMP_NUM_THREADS=1 python benchmarks/teacher_cost.py
"""

import time

import torch

import vitlab
from vitlab.bench import random_batch, training_step
from vitlab.training.optim import make_adamw
torch.set_num_threads(1)
torch.manual_seed(0)
student = vitlab.create_model("ViT-Ti/16", patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4,
    classifier="token", distill_token=True, patch_dropout=0.8, in_chans=1, image_size=28, num_classes=10).train()
bit = vitlab.create_model("BiT-R50x1", layers=(1, 1, 1), in_chans=1, image_size=28, num_classes=10).eval()
vit = vitlab.create_model("ViT-Ti/16", patch_size=4, width=128, depth=6, mlp_dim=512, num_heads=4,
    classifier="gap", in_chans=1, image_size=28, num_classes=10).eval()
x, y = random_batch(256, 28, 10, "cpu", in_chans=1)
step = training_step(lambda im: student.forward_heads(im)[0], make_adamw(student, lr=1e-3, weight_decay=0.05), x, y, "bf16", clip_grad_norm=1.0)
def fwd(m):
    def f():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x)
    return f
fns = {"student step (PD 0.8, 2 tokens)": step, "BiT-R50x1 [1,1,1] teacher forward": fwd(bit), "ViT main-job teacher forward (49 tokens)": fwd(vit)}
for f in fns.values(): f(); f()
times = {k: [] for k in fns}
for r in range(5):
    for k, f in fns.items():
        t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
for k, v in times.items():
    v.sort(); print(f"{k}: median {v[2]*1000:.0f} ms per batch of 256")
