"""ImageNet ReaL ("Are we done with ImageNet?", Beyer et al. 2020): re-assessed validation labels.

`real.json` is a list with one entry per validation image, in the order ILSVRC2012_val_00000001 ..., each a list
of that image's valid labels (possibly several, possibly none). A top-1 prediction counts as correct when it is in
the list; images with an empty list are left out of the accuracy, as in the ReaL paper.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..data.errors import DataError

VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


def load_real_labels(path: str | Path) -> list[list[int]]:
    path = Path(path)
    try:
        labels = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read ReaL labels: {e}") from e
    if not isinstance(labels, list):
        raise DataError(f"{path}: ReaL labels must be a JSON list (one list of labels per image), "
                         f"not {type(labels).__name__}")
    for i, entry in enumerate(labels):
        if not isinstance(entry, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in entry):
            raise DataError(f"{path}: entry {i} must be a list of integer labels, got {entry!r}")
    return labels


def align_to_dataset(real: list[list[int]], dataset) -> list[list[int]]:
    """ReaL labels indexed by data set position.

    A folder of ImageNet validation images lists files by class folder, not by validation number, so where the
    data set can name its samples (`sample_name(i)`) and the names carry ILSVRC2012_val_NNNNNNNN, the number picks
    the entry; otherwise sample i takes entry i and the sizes must agree.
    """
    n = len(dataset)
    names = [dataset.sample_name(i) for i in range(n)] if hasattr(dataset, "sample_name") else None
    matches = [VAL_NAME.search(str(name)) for name in names] if names else []
    if names and all(matches):
        numbers = [int(m.group(1)) for m in matches]
        too_big = [k for k in numbers if k > len(real) or k < 1]
        if too_big:
            raise DataError(f"validation image number {too_big[0]} is outside the {len(real)} ReaL entries")
        return [real[k - 1] for k in numbers]
    if len(real) != n:
        raise DataError(f"the ReaL file has {len(real)} entries but the data set has {n} images, and the images "
                         "are not named ILSVRC2012_val_NNNNNNNN to match them up")
    return real


def real_hits(predictions: list[int], indices: list[int], real: list[list[int]]) -> tuple[int, int]:
    """(correct, counted) for predictions of samples `indices`; samples without ReaL labels are not counted."""
    correct = counted = 0
    for prediction, index in zip(predictions, indices):
        valid = real[index]
        if valid:
            counted += 1
            correct += prediction in valid
    return correct, counted
