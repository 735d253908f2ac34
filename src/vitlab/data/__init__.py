"""vitlab.data: sources, split specs, the paper's transforms, DeiT augmentation, a resumable loader."""
from .augment import mix, random_erase, soft_targets
from .config import DataConfig
from .errors import BadImage, DataError
from .loader import Loader, build_loader
from .sources import build_dataset, parse_spec
from .splits import parse_split

__all__ = ["DataConfig", "DataError", "BadImage", "build_dataset", "build_loader", "Loader", "parse_spec",
           "parse_split", "soft_targets", "mix", "random_erase"]
