"""Split specs: `train`, `train[:98%]`, `train[98%:]`, `train[:1000]`, `train[10:20]`.

A slice selects from a permutation of the split fixed by `split_seed`, so `train[:98%]` and
`train[98%:]` are complementary random subsets whatever the order of the files on disk.
With split_seed=None the slice is taken in the source's own order.
"""
import re
from dataclasses import dataclass

import numpy as np

from .errors import DataError

_SPEC = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(?:\[\s*([^:\]]*)\s*:\s*([^:\]]*)\s*\])?\s*$")


@dataclass(frozen=True)
class Split:
    name: str
    start: str = ""  # "", "10" or "98%"
    stop: str = ""

    @property
    def is_whole(self) -> bool:
        return not self.start and not self.stop

    @property
    def uses_counts(self) -> bool:
        return any(b and not b.endswith("%") for b in (self.start, self.stop))

    def fraction_range(self) -> tuple[float, float]:
        """(lo, hi) as fractions in [0, 1]; only for percent (or open) bounds."""
        lo = float(self.start[:-1]) / 100 if self.start else 0.0
        hi = float(self.stop[:-1]) / 100 if self.stop else 1.0
        return lo, hi

    def bounds(self, n: int) -> tuple[int, int]:
        return _bound(self.start, n, 0), _bound(self.stop, n, n)


def _bound(text: str, n: int, default: int) -> int:
    if not text:
        return default
    if text.endswith("%"):
        return int(round(n * float(text[:-1]) / 100))
    return min(int(text), n)


def parse_split(spec: str) -> Split:
    m = _SPEC.match(spec or "")
    if not m:
        raise DataError(f"bad split spec {spec!r}: expected e.g. 'train', 'train[:98%]', 'train[98%:]', 'train[10:20]'")
    name, start, stop = m.group(1), (m.group(2) or "").strip(), (m.group(3) or "").strip()
    for b in (start, stop):
        if b and not re.fullmatch(r"\d+(\.\d+)?%|\d+", b):
            raise DataError(f"bad split bound {b!r} in {spec!r}: use a non-negative count (10) or percentage (98%)")
        if b.endswith("%") and float(b[:-1]) > 100:
            raise DataError(f"bad split bound {b!r} in {spec!r}: a percentage is at most 100%")
    return Split(name, start, stop)


def select(split: Split, n: int, seed: int | None, what: str) -> np.ndarray:
    """Indices into a split of n items that the slice selects; refuses an empty selection."""
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    lo, hi = split.bounds(n)
    picked = np.sort(order[lo:hi])
    if len(picked) == 0:
        raise DataError(f"split {split_text(split)!r} selects no samples of {what} ({n} samples in {split.name!r})")
    return picked


def split_text(split: Split) -> str:
    return split.name if split.is_whole else f"{split.name}[{split.start}:{split.stop}]"


def key_fraction(key: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for a sample key (used to split streamed shards)."""
    import hashlib

    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64
