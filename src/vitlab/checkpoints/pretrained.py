"""The published ViT checkpoints vitlab knows by name: one table, as data.

Every row is a file of google-research/vision_transformer's public bucket (gs://vit_models, served over https
at storage.googleapis.com/vit_models/...), named as that repository names it: `imagenet21k/ViT-B_16` (the
folder and the file stem), and for AugReg (Steiner et al. 2021, "How to train your ViT?") the file stem
itself, or the short model name of vit_jax/configs/augreg.py (`Ti_16`, `R26_S_32`, ...), which means the
checkpoint that repository recommends for that model (the best ImageNet-21k pre-training). A bare `ViT-B_16`
is the ImageNet-21k pre-trained file, the checkpoint the official fine-tuning code starts from.

`accuracy` is ImageNet top-1 as the publishers report it (vit_jax README): for a pre-trained checkpoint,
after fine-tuning on ImageNet at 384 px; for a fine-tuned one, of that checkpoint. `None` where they report none.
Other AugReg file stems (there are 50k) resolve too, by the bucket's naming rule (see `augreg_url`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BUCKET = "https://storage.googleapis.com/vit_models"


@dataclass(frozen=True)
class Pretrained:
    name: str
    url: str
    resolution: int
    source: str  # who published it, and the training data
    accuracy: float | None  # ImageNet top-1 (%) as reported; see the module docstring
    sha256: str | None = None  # where the publisher gives one


def _bucket(folder: str, stem: str) -> str:
    return f"{BUCKET}/{folder.replace('+', '%2B')}/{stem.replace('+', '%2B')}.npz"


I21K = "vit_jax: ImageNet-21k"
I21K_FT = "vit_jax: ImageNet-21k, fine-tuned ImageNet"
AUGREG = "vit_jax AugReg: ImageNet-21k"
AUGREG_FT = "vit_jax AugReg: ImageNet-21k, fine-tuned ImageNet"

# (folder/stem, resolution, source, accuracy) of the paper's own checkpoints
_OFFICIAL = (
    ("imagenet21k/ViT-B_16", 224, I21K, 84.62), ("imagenet21k/ViT-B_32", 224, I21K, 81.79),
    ("imagenet21k/ViT-B_8", 224, I21K, None), ("imagenet21k/ViT-L_16", 224, I21K, 85.07),
    ("imagenet21k/ViT-L_32", 224, I21K, 81.78), ("imagenet21k/ViT-H_14", 224, I21K, None),
    ("imagenet21k/R50+ViT-B_16", 224, I21K, 85.08), ("imagenet21k/R26+ViT-B_32", 224, I21K, None),
    ("imagenet21k/R50+ViT-L_32", 224, I21K, None),
    ("imagenet21k+imagenet2012/ViT-B_16", 384, I21K_FT, 84.62),
    ("imagenet21k+imagenet2012/ViT-B_16-224", 224, I21K_FT, 81.2),
    ("imagenet21k+imagenet2012/ViT-B_32", 384, I21K_FT, 81.79),
    ("imagenet21k+imagenet2012/ViT-L_16", 384, I21K_FT, 85.07),
    ("imagenet21k+imagenet2012/ViT-L_16-224", 224, I21K_FT, 82.7),
    ("imagenet21k+imagenet2012/ViT-L_32", 384, I21K_FT, 81.78),
    ("imagenet21k+imagenet2012/R50+ViT-B_16", 384, I21K_FT, 85.08),
)

# (augreg.py model name, recommended pre-training stem, fine-tuning suffix, ImageNet accuracy of the fine-tuned)
_AUGREG = (
    ("L_16", "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0", "lr_0.01", 85.59),
    ("B_16", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0", "lr_0.03", 85.49),
    ("S_16", "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0", "lr_0.03", 83.73),
    ("R50_L_32", "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1", "lr_0.01", 85.99),
    ("R26_S_32", "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "lr_0.01", 83.85),
    ("Ti_16", "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "lr_0.03", 78.22),
    ("B_32", "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0", "lr_0.01", 83.59),
    ("S_32", "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0", "lr_0.01", 79.58),
    ("R_Ti_16", "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0", "lr_0.03", 75.40),
)


def _table() -> tuple[Pretrained, ...]:
    rows = [Pretrained(name, _bucket(*name.split("/")), res, src, acc) for name, res, src, acc in _OFFICIAL]
    for name, stem, lr, acc in _AUGREG:
        tuned = f"{stem}--imagenet2012-steps_20k-{lr}-res_384"
        rows.append(Pretrained(stem, augreg_url(stem), 224, AUGREG, acc))
        rows.append(Pretrained(tuned, augreg_url(tuned), 384, AUGREG_FT, acc))
    return tuple(rows)


AUGREG_STEM = re.compile(r"(R_Ti|R26_S|R50_L|Ti|S|B|L)_(8|16|32)-i(1k|21k)-[\w.\-]+")


def augreg_url(stem: str) -> str:
    return f"{BUCKET}/augreg/{stem}.npz"


PRETRAINED = _table()
ALIASES = {  # shorter official names -> a row's name
    **{name.split("/")[1]: name for name, *_ in _OFFICIAL if name.startswith("imagenet21k/")},
    **{short: stem for short, stem, *_ in _AUGREG},
}
_BY_NAME = {row.name.lower(): row for row in PRETRAINED}


def find_pretrained(name: str) -> Pretrained | None:
    """The table's row for an official name (any case; an `augreg/` or `.npz` affix is allowed), or None."""
    key = name.strip().removeprefix("gs://vit_models/").removesuffix(".npz")
    key = ALIASES.get(key, ALIASES.get(key.removeprefix("augreg/"), key))
    row = _BY_NAME.get(key.lower()) or _BY_NAME.get(key.removeprefix("augreg/").lower())
    if row is not None:
        return row
    stem = key.removeprefix("augreg/")
    if AUGREG_STEM.fullmatch(stem):  # any other file of the AugReg bucket, by its naming rule
        upstream = "ImageNet-21k" if "-i21k-" in stem else "ImageNet-1k"
        downstream = re.search(r"--(\w+?)-steps", stem)
        source = f"vit_jax AugReg: {upstream}" + (f", fine-tuned {downstream[1]}" if downstream else "")
        res = re.search(r"res_(\d+)", stem)
        return Pretrained(stem, augreg_url(stem), int(res[1]) if res else 224, source, None)
    return None
