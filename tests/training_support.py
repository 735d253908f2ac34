"""Helpers for the training tests: tiny configs, and an entry point for subprocess / torchrun runs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# Tiny models run far faster on one thread, and several test processes may share the machine's cores.
torch.set_num_threads(1)


def memory_dataset(n: int, size: int, chans: int, num_classes: int = 4, seed: int = 1234):
    """Separable images: each class is a fixed random pattern plus noise (drawn with `seed`)."""
    patterns = torch.randn(num_classes, chans, size, size, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = (patterns[labels] + 0.8 * torch.randn(n, chans, size, size, generator=g)).clamp(-1, 1)
    return images, labels


def image_folder(root: Path, n_train: int = 256, n_test: int = 64) -> Path:
    """The separable data set above as PNG files, root/{train,test}/{a,b,c,d}/i.png (made once per root)."""
    from PIL import Image

    if (root / "test").is_dir():
        return root
    for split, n, seed in (("train", n_train, 1234), ("test", n_test, 99)):
        images, labels = memory_dataset(n, 16, 1, seed=seed)
        pixels = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        for i, (img, label) in enumerate(zip(pixels, labels.tolist())):
            folder = root / split / "abcd"[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0]).save(folder / f"{i:04d}.png")
    return root


DATA_ROOT = Path(__file__).resolve().parent / ".cache" / "training-images"


def tiny_config(run_dir, **sections) -> dict:
    """A raw config dict for a ~10k-parameter ViT on 16x16 images that trains in a second or two."""
    raw = {
        "run_dir": str(run_dir),
        "seed": 0,
        "model": {"name": "ViT-Ti/16", "overrides": dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2)},
        "data": {"dataset": f"folder:{image_folder(DATA_ROOT)}", "image_size": 16, "in_chans": 1, "batch_size": 16,
                 "inception_crop": False, "flip": False},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05},
        "schedule": {"warmup_steps": 2, "decay": "cosine"},
        "train": {"steps": 12, "log_every": 1, "checkpoint_every": 4, "keep_checkpoints": 2, "plot": False},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return raw


def write_config(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def native_threads() -> list[str]:
    """Names of this process's OS threads (Linux), e.g. gloo's 'pt_gloo_runloop' and 'gloo_tcp_loop'."""
    tasks = Path("/proc/self/task")
    names = []
    for task in tasks.iterdir() if tasks.is_dir() else ():
        try:
            names.append((task / "comm").read_text().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return sorted(names)


def main(argv=None) -> int:
    from vitlab.cli import main as cli_main

    rc = cli_main(argv if argv is not None else sys.argv[1:])
    # a communication backend still running here would be torn down in C++ static destruction at exit()
    sys.stderr.write(f"threads at exit: {native_threads()}\n")  # one write: ranks share the stream
    return rc


if __name__ == "__main__":
    sys.exit(main())
