"""Uploaded bytes -> a uint8 image tensor, refusing what would hurt the server before decoding it.

The checks run in order of cost: the byte count (already capped by the app's body limit), then the header's
declared size (Pillow reads only the header on open), then the decode itself. A file that declares far more
pixels than its bytes could plausibly hold is a decompression bomb and is named as one.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError

from ..data.images import to_pixels
from .errors import RequestError

# Pixels per byte above which an oversized image is called a decompression bomb: photographs compress to
# about 2-10 pixels per byte, flat graphics to a few hundred; a bomb (one colour, huge canvas) to thousands.
BOMB_PIXELS_PER_BYTE = 500


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 2**20  # one upload
    max_pixels: int = 40_000_000  # width x height as the header declares it
    max_request_pixels: int = 100_000_000  # all the images of one request together


def open_upload(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """The upload opened lazily (its header read, nothing decoded); RequestError (400/413/415) for anything else."""
    if not data:
        raise RequestError(400, f"{name}: empty body (no image bytes)")
    if len(data) > limits.max_bytes:
        raise RequestError(413, f"{name}: {len(data):,} bytes is more than the limit of {limits.max_bytes:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"{name}: a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(415, f"{name}: not an image Pillow can read ({len(data):,} bytes)") from None
    check_size(img, len(data), name, limits)
    return img


def check_request_pixels(images: list[Image.Image], limits: ImageLimits) -> None:
    total = sum(img.size[0] * img.size[1] for img in images)
    if total > limits.max_request_pixels:
        raise RequestError(413, f"the {len(images)} images of this request have {total:,} pixels in all, more "
                                f"than the limit of {limits.max_request_pixels:,}; send fewer or smaller images")


def decode_upload(img: Image.Image, name: str, in_chans: int, min_side: int | None = None) -> torch.Tensor:
    """uint8 (C, H, W), as every command reads a file (`vitlab.data.images.to_pixels`, at a reduced scale where
    `min_side` allows); RequestError 415 for data Pillow cannot decode."""
    try:
        return to_pixels(img, in_chans, min_side)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise RequestError(415, f"{name}: cannot decode the {img.format} image ({e})") from None
    finally:
        img.close()  # frees its decoded pixels too, which `with img` would leave to whoever holds `img`


def decode_image(data: bytes, name: str, in_chans: int, limits: ImageLimits) -> torch.Tensor:
    """One upload, opened and decoded at full resolution."""
    return decode_upload(open_upload(data, name, limits), name, in_chans)


def check_size(img: Image.Image, num_bytes: int, name: str, limits: ImageLimits) -> None:
    width, height = img.size
    pixels = width * height
    if pixels == 0:
        raise RequestError(415, f"{name}: the image is {width}x{height} pixels (empty)")
    if pixels <= limits.max_pixels:
        return
    if pixels / num_bytes > BOMB_PIXELS_PER_BYTE:
        raise RequestError(413, f"{name}: a decompression bomb: {width}x{height} = {pixels:,} pixels declared in "
                                f"{num_bytes:,} bytes (limit {limits.max_pixels:,} pixels)")
    raise RequestError(413, f"{name}: {width}x{height} = {pixels:,} pixels is more than the limit of "
                            f"{limits.max_pixels:,}")
