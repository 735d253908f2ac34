"""Helpers for the training tests: tiny configs, and an entry point for subprocess / torchrun runs.

Until vitlab.data lands on this branch, `install_fake_data` provides a small in-memory stand-in with the
same interface (DataConfig, DataError, build_loader with state_dict/load_state_dict); it is removed once the
real package is merged.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
# Tiny models run far faster on one thread, and several test processes may share the machine's cores.
torch.set_num_threads(1)


def install_fake_data() -> None:
    try:
        import vitlab.data  # noqa: F401
        return
    except ImportError:
        pass
    import vitlab

    class DataError(ValueError):
        pass

    @dataclass
    class DataConfig:
        dataset: str = "folder:"
        root: str | None = None
        train_split: str = "train"
        eval_split: str = "test"
        image_size: int = 16
        in_chans: int = 1
        batch_size: int = 16
        num_workers: int = 0
        seed: int = 0
        inception_crop: bool = False
        flip: bool = False
        normalize: str = "minus_one_one"
        mean: tuple[float, ...] = (0.5,)
        std: tuple[float, ...] = (0.5,)
        mixup_alpha: float = 0.0
        label_smoothing: float = 0.0

    module = types.ModuleType("vitlab.data")
    module.DataConfig, module.DataError, module.build_loader = DataConfig, DataError, build_memory_loader
    sys.modules["vitlab.data"] = module
    vitlab.data = module


def memory_dataset(n: int, size: int, chans: int, num_classes: int = 4, seed: int = 1234):
    """Separable images: each class is a fixed random pattern plus noise (drawn with `seed`)."""
    patterns = torch.randn(num_classes, chans, size, size, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    images = (patterns[labels] + 0.8 * torch.randn(n, chans, size, size, generator=g)).clamp(-1, 1)
    return images, labels


class MemoryLoader:
    """Per epoch a seeded permutation; each global batch is cut into world_size per-rank slices."""

    def __init__(self, images, labels, batch_size, rank, world_size, train, seed):
        self.images, self.labels = images, labels
        self.batch_size, self.rank, self.world_size, self.train, self.seed = batch_size, rank, world_size, train, seed
        self.num_classes, self.class_names = 4, ["a", "b", "c", "d"]
        self.epoch, self.position, self.skipped = 0, 0, 0

    def __len__(self):
        n = len(self.labels)
        if self.train:
            return n // (self.batch_size * self.world_size)
        return math.ceil(len(range(self.rank, n, self.world_size)) / self.batch_size)

    def order(self):
        if not self.train:
            return np.arange(self.rank, len(self.labels), self.world_size)
        perm = np.random.default_rng(self.seed + self.epoch).permutation(len(self.labels))
        g = self.batch_size * self.world_size
        return np.concatenate([perm[i * g + self.rank * self.batch_size:i * g + (self.rank + 1) * self.batch_size]
                               for i in range(len(self))])

    def __iter__(self):
        order = self.order()
        if not self.train:
            for i in range(0, len(order), self.batch_size):
                idx = torch.from_numpy(order[i:i + self.batch_size])
                yield self.images[idx], self.labels[idx]
            return
        while self.position < len(self):
            idx = torch.from_numpy(order[self.position * self.batch_size:(self.position + 1) * self.batch_size])
            self.position += 1
            yield self.images[idx], self.labels[idx]
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "perm_check": np.arange(3)}

    def load_state_dict(self, state):
        assert isinstance(state["perm_check"], np.ndarray)
        self.epoch, self.position = state["epoch"], state["position"]


def build_memory_loader(cfg, split, train=True, rank=0, world_size=1, device="cpu", batch_size=None):
    n = 256
    images, labels = memory_dataset(n, cfg.image_size, cfg.in_chans, seed=1234 if split == cfg.train_split else 99)
    return MemoryLoader(images, labels, batch_size or cfg.batch_size // world_size, rank, world_size, train, cfg.seed)


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
    install_fake_data()
    from vitlab.cli import main as cli_main

    rc = cli_main(argv if argv is not None else sys.argv[1:])
    # a communication backend still running here would be torn down in C++ static destruction at exit()
    sys.stderr.write(f"threads at exit: {native_threads()}\n")  # one write: ranks share the stream
    return rc


if __name__ == "__main__":
    sys.exit(main())
