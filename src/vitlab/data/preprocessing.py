"""The preprocessing record: how a checkpoint's model wants its pixels, saved with every checkpoint.

One record describes the evaluation transform completely: the input size, whether the image is resized whole
or a centre `crop_fraction` of it is taken first, the resampling filter, the normalisation and its constants,
the channel count and the label names. Training-time evaluation (the loader) and every command (`eval`,
`fewshot`, `vtab`, `predict`, `inspect`) build their transform from it with `eval_transform(record)`, so no
two of them can disagree.

Each checkpoint format gets a record (`for_format`): what a vitlab run saved; for Hugging Face folders their
`preprocessor_config.json` (else ViTImageProcessor's defaults); for timm files the `pretrained_cfg` of a
`config.json` beside them (else timm's ImageNet defaults: mean/std, crop_pct 0.875, bicubic); for the official
and big_vision .npz files the papers' x / 127.5 - 1 on a plain resize.

In a checkpoint's config.json the record is a plain dict (`to_dict`); `from_dict` also reads older records and
the spellings "normalization" / "normalize" for "normalisation".
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import BadImage, DataError
from .images import to_pixels
from .transforms import centre_box

NORMALISATIONS = ("minus_one_one", "mean_std")
INTERPOLATIONS = ("bilinear", "bicubic")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # Hugging Face stores Pillow's filter numbers
NORMALISATION_KEYS = ("normalisation", "normalization", "normalize")


@dataclass(frozen=True)
class Preprocessing:
    image_size: tuple[int, int] = (224, 224)  # (height, width) given to the model
    resize_crop: bool = False  # False: resize the whole image; True: take the centre crop_fraction, then resize
    crop_fraction: float = 0.875
    interpolation: str = "bilinear"  # antialiased, as Pillow resizes
    normalisation: str = "minus_one_one"  # x / 127.5 - 1, or "mean_std": (x / 255 - mean) / std
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    channels: int = 3
    label_names: tuple[str, ...] | None = None

    def __post_init__(self):
        size = self.image_size
        object.__setattr__(self, "image_size", (int(size), int(size)) if isinstance(size, int) else
                           tuple(int(s) for s in size))
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))
        if self.normalisation not in NORMALISATIONS:
            raise DataError(f"preprocessing: normalisation {self.normalisation!r} is not one of {NORMALISATIONS}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"preprocessing: interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if not 0 < self.crop_fraction <= 1:
            raise DataError(f"preprocessing: crop_fraction {self.crop_fraction} is not in (0, 1]")

    # ---- as saved in a checkpoint ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["label_names"] = None if self.label_names is None else list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict | None, **defaults) -> "Preprocessing":
        """A record from a checkpoint's dict; keys it lacks (older checkpoints) come from `defaults`, then from
        the paper's plain resize and x / 127.5 - 1."""
        d = dict(d or {})
        for key in NORMALISATION_KEYS[1:]:
            if key in d and "normalisation" not in d:
                d["normalisation"] = d[key]
        known = {f.name for f in dataclasses.fields(cls)}
        values = {**defaults, **{k: v for k, v in d.items() if k in known and v is not None}}
        if "label_names" in d and d["label_names"] is None:
            values.pop("label_names", None)
        return cls(**values)

    @classmethod
    def coerce(cls, record: "Preprocessing | dict | None") -> "Preprocessing":
        """A record as given, or read from a checkpoint's dict (None: the paper's plain resize, x / 127.5 - 1)."""
        return record if isinstance(record, cls) else cls.from_dict(record)

    def replace(self, **changes) -> "Preprocessing":
        return dataclasses.replace(self, **changes)

    # ---- the transform --------------------------------------------------------------------------------------
    def geometry(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float (C, H, W) / (N, C, H, W) pixels to float pixels (still 0..255) at image_size: the centre
        crop when resize_crop, then an antialiased resize."""
        x = images.float()
        if self.resize_crop:
            top, left, h, w = centre_box(x.shape[-2], x.shape[-1], self.crop_fraction)
            x = x[..., top:top + h, left:left + w]
        if tuple(x.shape[-2:]) == self.image_size:
            return x
        batch = x if x.ndim == 4 else x[None]
        out = F.interpolate(batch, size=self.image_size, mode=self.interpolation, antialias=True, align_corners=False)
        if self.interpolation == "bicubic":  # cubic overshoots; Pillow clips to the pixel range
            out = out.clamp(0, 255)
        return out if x.ndim == 4 else out[0]

    def decode_side(self) -> int:
        """A side that an image reduced while decoding (`to_pixels(min_side=)`) keeps, for `geometry` to give
        nearly what it gives from the full image (within a pixel value): four times the side its crop is resized
        to, so that the antialiased resize still does the averaging."""
        side = max(self.image_size) / (self.crop_fraction if self.resize_crop else 1)
        return 4 * math.ceil(side)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 255] (any float or uint8 tensor, channels third from last) to the model's input range."""
        x = pixels.float()
        if self.normalisation == "minus_one_one":
            return x / 127.5 - 1.0
        channels = x.shape[-3]
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device)[:channels].view(-1, 1, 1) * 255
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device)[:channels].view(-1, 1, 1) * 255
        return (x - mean) / std

    def denormalise(self, inputs: torch.Tensor) -> torch.Tensor:
        """The inverse of `normalise`: model inputs back to float pixels in [0, 255] (unrounded, unclipped)."""
        x = inputs.float()
        if self.normalisation == "minus_one_one":
            return (x + 1.0) * 127.5
        channels = x.shape[-3]
        mean = torch.tensor(self.mean, device=x.device)[:channels].view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device)[:channels].view(-1, 1, 1)
        return (x * std + mean) * 255.0

    def unit_affine(self, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel with normalise(pixels) = pixels / 255 * scale + shift (a grey model's record
        may list three equal values; a record with fewer values than channels repeats its first)."""
        if self.normalisation == "mean_std":
            mean, std = (per_channel(values, channels) for values in (self.mean, self.std))
            return 1.0 / std, -mean / std
        return torch.full((channels,), 2.0), torch.full((channels,), -1.0)

    def renormalise(self, inputs: torch.Tensor, target: "Preprocessing") -> torch.Tensor:
        """(N, C, H, W) inputs normalised as this record says, normalised as `target` says instead."""
        channels = inputs.shape[1]
        (a_scale, a_shift), (b_scale, b_shift) = self.unit_affine(channels), target.unit_affine(channels)
        if torch.equal(a_scale, b_scale) and torch.equal(a_shift, b_shift):
            return inputs
        scale = (b_scale / a_scale).to(inputs).view(1, -1, 1, 1)
        shift = (b_shift - a_shift * b_scale / a_scale).to(inputs).view(1, -1, 1, 1)
        return inputs * scale + shift


def per_channel(values, channels: int) -> torch.Tensor:
    """A record's mean or std for `channels` channels."""
    values = torch.tensor(values, dtype=torch.float32).flatten()
    return values[:channels] if values.numel() >= channels else values[:1].expand(channels)


def eval_transform(record: Preprocessing):
    """The evaluation transform a record describes: uint8 images (C, H, W) or (N, C, H, W) to model input."""
    return lambda images: record.normalise(record.geometry(images))


class EvalImage:
    """The record's geometry for one lazily opened image, in the loader's workers: decoded whole (as every
    command decodes it), then float (C, size, size) pixels; the loader normalises on the device."""

    def __init__(self, record: Preprocessing):
        self.record = record

    def __call__(self, img, rng=None, name: str = "?") -> torch.Tensor:
        try:
            pixels = to_pixels(img, self.record.channels)
        except Exception as e:  # truncated or corrupt data
            raise BadImage(name, f"cannot decode ({type(e).__name__}: {e})") from None
        return self.record.geometry(pixels)


# ---- where records come from --------------------------------------------------------------------------------
def from_data_config(data, label_names=None) -> Preprocessing:
    """The record of a training run: its [data] table's evaluation transform."""
    return Preprocessing(image_size=data.image_size, resize_crop=data.resize_crop, crop_fraction=data.crop_fraction,
                         normalisation=data.normalisation,
                         mean=data.mean if data.normalisation == "mean_std" else (0.5,) * 3,
                         std=data.std if data.normalisation == "mean_std" else (0.5,) * 3, channels=data.in_chans,
                         label_names=label_names)


def of_model(model) -> Preprocessing:
    """The record a loaded model carries, at the size and channel count the model now has (a checkpoint loaded
    at another resolution is evaluated at that resolution)."""
    config = model.config
    size = config.image_size
    record = Preprocessing.from_dict(getattr(model, "preprocessing", None))
    names = getattr(model, "label_names", None)
    return record.replace(image_size=(size, size) if isinstance(size, int) else tuple(size),
                          channels=config.in_chans, label_names=tuple(names) if names else record.label_names)


def for_format(fmt: str, path: Path, model) -> Preprocessing:
    """The record of a checkpoint of format `fmt` ('vitlab', 'hf', 'npz', 'timm') at `path` holding `model`."""
    size, channels = model.config.image_size, model.config.in_chans
    base = dict(image_size=size, channels=channels, label_names=getattr(model, "label_names", None) or None)
    path = Path(path)
    if fmt == "vitlab":
        record = Preprocessing.from_dict(getattr(model, "preprocessing", None), **base)
    elif fmt == "hf":
        record = hf_record(read_json_if_any(path / "preprocessor_config.json"), base)
    elif fmt == "timm":
        folder = path if path.is_dir() else path.parent
        record = timm_record(read_json_if_any(folder / "config.json"), base)
    else:
        record = Preprocessing(**base)  # official / big_vision .npz: resize, x / 127.5 - 1
    if record.label_names is not None and len(record.label_names) != model.num_classes:
        record = record.replace(label_names=None)
    return record


def read_json_if_any(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read the preprocessing settings ({e})") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object of preprocessing settings, got {type(data).__name__}")
    return data


def mean_std(mean, std, channels: int) -> dict:
    mean, std = tuple(mean), tuple(std)
    if all(m == 0.5 for m in mean) and all(s == 0.5 for s in std):
        return {"normalisation": "minus_one_one"}
    return {"normalisation": "mean_std", "mean": mean, "std": std}


def hf_record(config: dict | None, base: dict) -> Preprocessing:
    """A Hugging Face image processor's settings; without preprocessor_config.json, ViTImageProcessor's
    defaults (resize to the model's size, bilinear, mean = std = 0.5, which is x / 127.5 - 1)."""
    config = config or {}
    record = dict(base, interpolation=PIL_RESAMPLE.get(config.get("resample", 2), "bilinear"),
                  **mean_std(config.get("image_mean", (0.5,) * 3), config.get("image_std", (0.5,) * 3), 3))
    if config.get("do_center_crop") and config.get("crop_size"):
        resized, crop = config.get("size") or {}, config["crop_size"]
        shorter = resized.get("shortest_edge") or min(resized.get("height", 0), resized.get("width", 0))
        crop_side = crop.get("height", 0) if isinstance(crop, dict) else int(crop)
        if shorter and crop_side and crop_side <= shorter:
            record.update(resize_crop=True, crop_fraction=crop_side / shorter)
    return Preprocessing(**record)


def timm_record(config: dict | None, base: dict) -> Preprocessing:
    """timm's pretrained_cfg (from the config.json the Hub keeps beside the weights); without one, timm's
    defaults for ImageNet ViTs: ImageNet mean/std, centre crop 0.875, bicubic."""
    cfg = (config or {}).get("pretrained_cfg") or {}
    crop_pct = cfg.get("crop_pct", 0.875)
    interpolation = cfg.get("interpolation", "bicubic")
    names = (config or {}).get("label_names")
    record = dict(base, resize_crop=crop_pct < 1.0, crop_fraction=min(float(crop_pct), 1.0),
                  interpolation=interpolation if interpolation in INTERPOLATIONS else "bicubic",
                  **mean_std(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD), 3))
    if names:
        record["label_names"] = names
    return Preprocessing(**record)
