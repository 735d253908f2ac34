"""DataConfig: the `[data]` table of a training config."""
import dataclasses
from dataclasses import dataclass

from ..models.vit_config import MAX_IMAGE_SIZE
from .errors import DataError
from .splits import parse_split

NORMALISATIONS = ("minus_one_one", "mean_std")
MAX_WORKERS = 256  # data-loading processes


@dataclass
class DataConfig:
    # What to read.
    dataset: str = "fashion_mnist"  # fashion_mnist | cifar10 | cifar100 | folder:/dir | shards:/dir/x-{000..009}.tar
    root: str | None = None  # where to look first (the source's own search path follows)
    train_split: str = "train"  # e.g. "train[:98%]"
    eval_split: str = "test"  # e.g. "train[98%:]"
    split_seed: int | None = 0  # permutation for slices; None = slice in file order
    download: bool = True  # fetch Fashion-MNIST / CIFAR when not found locally
    # Geometry and channels.
    image_size: int = 224
    in_chans: int = 3
    # Loading.
    batch_size: int = 256  # global, per optimiser step
    num_workers: int = 0
    seed: int = 0
    max_pixels: int = 89_478_485  # larger images are skipped as decompression bombs (Pillow's limit)
    max_member_bytes: int = 64 * 2**20  # shards: larger tar members are skipped unread
    shuffle_buffer: int = 2000  # shards only
    # Train transforms (the paper's): inception crop + flip.
    inception_crop: bool = True
    crop_area: tuple[float, float] = (0.05, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    # Eval transform: resize to image_size, or resize then centre-crop `crop_fraction` of it.
    resize_crop: bool = False
    crop_fraction: float = 0.875
    # Normalisation: x / 127.5 - 1, or (x / 255 - mean) / std.
    normalisation: str = "minus_one_one"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    # DeiT-style strong augmentation (all off by default).
    randaugment_n: int = 0
    randaugment_m: float = 9.0
    randaugment_mstd: float = 0.5
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    random_erasing: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self):
        for name in ("crop_area", "crop_aspect", "mean", "std"):  # TOML gives lists
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        self.validate()

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, table: dict) -> "DataConfig":
        unknown = sorted(set(table) - cls.field_names())
        if unknown:
            raise DataError(f"unknown [data] setting(s) {unknown}; known: {sorted(cls.field_names())}")
        return cls(**table)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def mixes(self) -> bool:
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @property
    def soft_targets(self) -> bool:
        return self.mixes or self.label_smoothing > 0

    def validate(self) -> "DataConfig":
        def bad(name, why):
            raise DataError(f"data.{name} = {getattr(self, name)!r}: {why}")

        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                bad(name, "must be a positive integer")

        def in_range(name, lo, hi):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                bad(name, f"must be a number in [{lo}, {hi}]")

        def pair(name, lo, hi):
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
                bad(name, "must be a pair [low, high]")
            if not lo < v[0] <= v[1] <= hi:
                bad(name, f"needs {lo} < low <= high <= {hi}")

        if not isinstance(self.dataset, str) or not self.dataset.strip():
            bad("dataset", "must name a source: fashion_mnist, cifar10, cifar100, folder:/dir, shards:/pattern")
        from .sources import parse_spec  # late: sources import this module's neighbours

        for name, check in (("dataset", parse_spec), ("train_split", parse_split), ("eval_split", parse_split)):
            try:
                check(getattr(self, name))
            except DataError as e:
                raise DataError(f"data.{name}: {e}") from None
        if self.root is not None and not str(self.root).strip():
            bad("root", "is empty; give a folder, or leave it out")
        positive_int("image_size")
        if self.image_size > MAX_IMAGE_SIZE:
            bad("image_size", f"must be at most {MAX_IMAGE_SIZE}")
        positive_int("batch_size")
        positive_int("max_pixels")
        positive_int("max_member_bytes")
        positive_int("shuffle_buffer")
        if self.in_chans not in (1, 3):
            bad("in_chans", "must be 1 or 3")
        if not isinstance(self.num_workers, int) or not 0 <= self.num_workers <= MAX_WORKERS:
            bad("num_workers", f"must be an integer from 0 to {MAX_WORKERS}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            bad("seed", "must be an integer >= 0")
        if self.split_seed is not None and (not isinstance(self.split_seed, int) or self.split_seed < 0):
            bad("split_seed", "must be an integer >= 0, or omitted")
        pair("crop_area", 0.0, 1.0)
        pair("crop_aspect", 0.0, float("inf"))
        in_range("crop_fraction", 1e-3, 1.0)
        if self.normalisation not in NORMALISATIONS:
            bad("normalisation", f"must be one of {NORMALISATIONS}")
        for name in ("mean", "std") if self.normalisation == "mean_std" else ():
            v = getattr(self, name)
            if not (isinstance(v, tuple) and len(v) in (1, self.in_chans) and all(isinstance(a, (int, float)) for a in v)):
                bad(name, f"must hold 1 or in_chans={self.in_chans} numbers (in [0, 1] pixel units)")
            if name == "std" and any(a <= 0 for a in v):
                bad(name, "must be positive")
        if not isinstance(self.randaugment_n, int) or not 0 <= self.randaugment_n <= 32:
            bad("randaugment_n", "must be an integer from 0 (off) to 32 (ops applied to each image; usually 2)")
        in_range("randaugment_m", 0, 30)
        in_range("randaugment_mstd", 0, 10)
        in_range("mixup_alpha", 0, 100)
        in_range("cutmix_alpha", 0, 100)
        in_range("mix_prob", 0, 1)
        in_range("mix_switch_prob", 0, 1)
        in_range("random_erasing", 0, 1)
        in_range("label_smoothing", 0, 0.999)
        return self
