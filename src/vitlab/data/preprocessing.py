"""The preprocessing record: how a checkpoint's model wants its pixels, saved with every checkpoint.

One record describes the evaluation transform completely: the input size, whether the image is resized whole
or a centre `crop_fraction` of it is taken first, the resampling filter, the normalisation and its constants,
the channel count and the label names. Training-time evaluation (the loader) and every command (`eval`,
`fewshot`, `vtab`, `predict`, `inspect`) build their transform from it with `eval_transform(record)`, so no
two of them can disagree.

Each checkpoint reader gives the model it loads its record (`model.preprocessing`, a `Preprocessing`): what a
vitlab run saved; a Hugging Face folder's `preprocessor_config.json` (checkpoints/hf.py); a timm file's
`pretrained_cfg` (checkpoints/timm.py); for the official and big_vision .npz files the papers' x / 127.5 - 1 on
a plain resize.

In a checkpoint's config.json the record is a plain dict (`to_dict`); `from_dict` also reads older records and
the spellings "normalization" / "normalize" for "normalisation".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import BadImage, DataError
from .images import to_pixels
from .transforms import centre_box

NORMALISATIONS = ("minus_one_one", "mean_std")
INTERPOLATIONS = ("bilinear", "bicubic")
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
    record = Preprocessing.coerce(getattr(model, "preprocessing", None))
    names = getattr(model, "label_names", None)
    return record.replace(image_size=(size, size) if isinstance(size, int) else tuple(size),
                          channels=config.in_chans, label_names=tuple(names) if names else record.label_names)


def model_defaults(model) -> dict:
    """What a checkpoint's record takes from the model it was read into: the input size, the channel count and
    the label names (for keys a file does not store)."""
    return dict(image_size=model.config.image_size, channels=model.config.in_chans,
                label_names=getattr(model, "label_names", None) or None)


def mean_std(mean, std, channels: int) -> dict:
    mean, std = tuple(mean), tuple(std)
    if all(m == 0.5 for m in mean) and all(s == 0.5 for s in std):
        return {"normalisation": "minus_one_one"}
    return {"normalisation": "mean_std", "mean": mean, "std": std}
