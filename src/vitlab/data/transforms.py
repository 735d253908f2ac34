"""The paper's training geometry: inception crop + flip (evaluation: `preprocessing.py`, the record's transform).

Two implementations of the same maths:
- `CropResize`, per image in loader workers: choose the crop box on the undecoded image, let
  libjpeg decode only the rows above the box's bottom and at reduced scale when the box allows,
  crop, then resize the uint8 crop with torch's antialiased bilinear filter (faster than
  Pillow's; same filter). Without the inception crop it takes the whole image (or its centre,
  `resize_crop`); the loader evaluates with the preprocessing record instead.
- `crop_flip_batch`, for data sets already in memory: batched matmuls on the training device.
"""
import math
import numpy as np
import torch
import torch.nn.functional as F

from .errors import BadImage
from .images import decode_box, oriented


def sample_crop_boxes(rng: np.random.Generator, n: int, height: int, width: int,
                      area=(0.05, 1.0), aspect=(3 / 4, 4 / 3), attempts: int = 10) -> np.ndarray:
    """Inception-style random crops: n rows of (top, left, h, w), integer pixels.

    Area fraction is uniform in `area`, aspect (w / h) log-uniform in `aspect`; the first of
    `attempts` draws that fits is used, else the largest centred crop with an allowed aspect.
    """
    total = height * width
    frac = rng.uniform(area[0], area[1], (n, attempts))
    ratio = np.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1]), (n, attempts)))
    w = np.round(np.sqrt(total * frac * ratio)).astype(np.int64)
    h = np.round(np.sqrt(total * frac / ratio)).astype(np.int64)
    fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
    first = fits.argmax(1)
    w, h, ok = w[np.arange(n), first], h[np.arange(n), first], fits.any(1)
    # Fallback: whole image, trimmed to the nearest allowed aspect.
    fw, fh = width, height
    if width / height < aspect[0]:
        fh = int(round(width / aspect[0]))
    elif width / height > aspect[1]:
        fw = int(round(height * aspect[1]))
    w, h = np.where(ok, w, fw), np.where(ok, h, fh)
    u = rng.random((n, 2))
    top = np.where(ok, (u[:, 0] * (height - h + 1)).astype(np.int64), (height - h) // 2)
    left = np.where(ok, (u[:, 1] * (width - w + 1)).astype(np.int64), (width - w) // 2)
    return np.stack([top, left, h, w], 1)


def centre_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the centred square that resize-shorter-side-then-centre-crop keeps."""
    side = max(1, int(round(min(height, width) * fraction)))
    return (height - side) // 2, (width - side) // 2, side, side


def resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, h, w) to (N, C, size, size), antialiased bilinear (Pillow's filter)."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def pil_to_batch(img) -> torch.Tensor:
    """PIL "L"/"RGB" to a uint8 1 x C x h x w tensor (channels-last memory).

    RGB comes out as Pillow stores it, 4 bytes a pixel ("RGBX"): cheaper to export than packed
    RGB, and torch's uint8 antialiased resize is fastest on 4 channels. Slice [:, :3] after.
    """
    if img.mode == "RGB":
        data, channels = img.tobytes("raw", "RGBX"), 4
    else:
        data, channels = img.tobytes(), 1
    x = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return x.view(img.height, img.width, channels).permute(2, 0, 1)[None]


class CropResize:
    """Per-image training transform: lazy PIL image -> uint8 C x size x size tensor."""

    def __init__(self, size: int, in_chans: int, *, inception_crop=True, area=(0.05, 1.0),
                 aspect=(3 / 4, 4 / 3), flip=True, resize_crop=False, crop_fraction=0.875, randaugment=None):
        self.size, self.in_chans = size, in_chans
        self.inception_crop, self.area, self.aspect, self.flip = inception_crop, area, aspect, flip
        self.resize_crop, self.crop_fraction, self.randaugment = resize_crop, crop_fraction, randaugment

    def box(self, rng, height, width):
        if self.inception_crop:
            return tuple(int(v) for v in sample_crop_boxes(rng, 1, height, width, self.area, self.aspect)[0])
        if self.resize_crop:
            return centre_box(height, width, self.crop_fraction)
        return 0, 0, height, width

    def __call__(self, img, rng: np.random.Generator, name: str = "?") -> torch.Tensor:
        try:
            img = oriented(img)  # an EXIF-rotated photo is cropped as shown (decoded whole: rare)
            width, height = img.size
            top, left, h, w = self.box(rng, height, width)
            crop = decode_box(img, (left, top, left + w, top + h), self.in_chans, (self.size, self.size))
        except Exception as e:  # truncated or corrupt data
            raise BadImage(name, f"cannot decode ({type(e).__name__}: {e})") from None
        flip = self.flip and rng.random() < 0.5
        out = resize_uint8(pil_to_batch(crop), self.size)
        if flip:
            out = out.flip(-1)
        # A strided view: the loader's collate (torch.stack) makes the one contiguous copy.
        out = out[0, : self.in_chans]
        if self.randaugment is not None:
            out = self.randaugment(out, rng)
        return out


def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """(B, out_size, in_size) bilinear weights mapping pixels [start, start + length) to out_size pixels.

    A triangle filter widened by the scale factor when shrinking, i.e. antialiased bilinear as
    Pillow does it. Only pixels inside the box count (crop, then resize), renormalised at its edges.
    """
    start, length = start.view(-1, 1, 1), length.view(-1, 1, 1)
    scale = length / out_size
    centre = start + (torch.arange(out_size, device=start.device).view(1, -1, 1) + 0.5) * scale
    pixel = torch.arange(in_size, device=start.device).view(1, 1, -1)
    w = (1 - (pixel + 0.5 - centre).abs() / scale.clamp(min=1.0)).clamp(min=0)
    w = w * ((pixel >= start) & (pixel < start + length))
    return w / w.sum(-1, keepdim=True)


def crop_flip_batch(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Float (B, C, H, W): crop each image to its (top, left, h, w) box, resize to size, flip where set.

    Crop + resize is separable, so it is two batched matmuls with per-image weight matrices.
    """
    boxes = boxes.to(x.device, torch.float32)
    rows = resample_weights(boxes[:, 0], boxes[:, 2], x.shape[-2], size)  # B x size x H
    cols = resample_weights(boxes[:, 1], boxes[:, 3], x.shape[-1], size)  # B x size x W
    cols = torch.where(flips.to(x.device).view(-1, 1, 1), cols.flip(1), cols)
    return rows.unsqueeze(1) @ x @ cols.transpose(1, 2).unsqueeze(1)
