"""Opening and decoding one image with Pillow, robustly: every failure becomes BadImage.

The one reader every command and the server use (`decode` for a file or bytes, `to_pixels` for an opened image):
EXIF orientation applied, transparency over white, 16-bit and float pixels scaled to 8 bits, any mode to grey
or RGB as the model takes it."""
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import BadImage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
EXIF_ORIENTATION = 0x0112


def open_image(source, name: str, max_pixels: int) -> Image.Image:
    """Open lazily (header only). `source` is a path or a binary file object. The format is read from the
    content, never from the name: a PNG called .jpg is a PNG."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(source)
    except Image.DecompressionBombError as e:  # Pillow refuses > 2 * Image.MAX_IMAGE_PIXELS itself
        raise BadImage(name, f"decompression bomb ({e})") from None
    except Exception as e:  # zero-byte, not an image, unreadable
        raise BadImage(name, f"cannot open ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(name, f"{w}x{h} pixels exceeds max_pixels={max_pixels} (decompression bomb?)")
    if w == 0 or h == 0:
        raise BadImage(name, "empty image")
    return img


def draft_jpeg(img: Image.Image, mode: str, box, size: tuple[int, int]):
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale when the crop `box` stays >= `size`.

    Returns the box in the coordinates of the (possibly smaller) decoded image. Also switches
    libjpeg to its fast DCT and plain chroma upsampling (Pillow's draft flag): ~5% faster, and
    the difference is far below what random-resized-crop training notices.
    """
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return box
    left, top, right, bottom = box
    scale = 1
    for s in (8, 4, 2):
        if (right - left) / s >= size[0] and (bottom - top) / s >= size[1]:
            scale = s
            break
    w, h = img.size
    img.draft(mode, (w // scale, h // scale))  # Pillow picks the largest scale keeping >= this size
    scale = img.decoderconfig[0] if img.decoderconfig else 1
    img.decoderconfig = (scale, 1)
    if scale == 1:
        return box
    return tuple(int(round(v / scale)) for v in box)


def jpeg_top_rows(data: bytes, rows: int) -> bytes | None:
    """The same sequential JPEG, its frame header claiming only the top `rows` rows, or None.

    libjpeg then entropy-decodes only the MCU rows above `rows` and skims over the rest of the
    scan (an "extraneous data" warning, not an error), so a crop near the top of an image costs
    proportionally less. Only for complete files (ending in the EOI marker): a truncated file
    takes the full decode and fails there. Progressive / arithmetic-coded files return None.
    """
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xC0, 0xC1):  # baseline / extended sequential Huffman: SOF length, precision, height
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            if not 0 < rows < height:
                return None
            return data[: i + 5] + rows.to_bytes(2, "big") + data[i + 7 :]
        if 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xDA:
            return None  # another frame type, or a scan before any frame header
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def decode_box(img: Image.Image, box: tuple[int, int, int, int], in_chans: int, size: tuple[int, int]) -> Image.Image:
    """Decode just enough of a lazily opened image to return the `box` crop as "L"/"RGB".

    For a JPEG opened from memory: only the rows down to the box's bottom (`jpeg_top_rows`), at
    the smallest DCT scale that keeps the box >= `size` (`draft_jpeg`).
    """
    if img.format == "JPEG" and isinstance(img.fp, io.BytesIO) and box[3] < img.size[1]:
        top_rows = jpeg_top_rows(img.fp.getvalue(), box[3])
        if top_rows is not None:
            img = Image.open(io.BytesIO(top_rows))
    box = draft_jpeg(img, "L" if in_chans == 1 else "RGB", box, size)
    return convert(img.crop(box), in_chans)


def convert(img: Image.Image, in_chans: int) -> Image.Image:
    """Any Pillow mode (palette, RGBA, CMYK, 16-bit, ...) to "L" (1 channel) or "RGB" (3)."""
    target = "L" if in_chans == 1 else "RGB"
    if img.mode == target:
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img)  # 16-bit stays 16-bit while shifted: a large image's copies stay small
        shift = 8 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 0
        img = Image.fromarray(np.clip(a >> shift, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img)
        img = Image.fromarray(np.clip(a * (255 if a.max(initial=0) <= 1 else 1), 0, 255).astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels become white, not whatever colour they hide
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert(target)


def oriented(img: Image.Image) -> Image.Image:
    """The image the way up its EXIF orientation tag says; without a tag, the same (still lazy) image."""
    if img.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL "L"/"RGB" image to a uint8 C x H x W tensor."""
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1)


def to_pixels(img: Image.Image, in_chans: int, min_side: int | None = None) -> torch.Tensor:
    """An opened image, whole, as the model sees it: uint8 C x H x W, C = `in_chans`; at full resolution unless
    `min_side` is given: then smaller by the largest whole factor that keeps both sides >= `min_side` (libjpeg
    decodes a JPEG at 1/2, 1/4 or 1/8 scale; other formats are box-averaged right after decoding), so a large
    image costs one decoded copy, not several.

    Raises ValueError for a channel count other than 1 or 3; Pillow's errors (truncated or corrupt data) pass."""
    if in_chans not in (1, 3):
        raise ValueError(f"the model takes {in_chans}-channel input; images are read as grey (1) or RGB (3)")
    if min_side is not None and img.format == "JPEG":
        factor = reduction(img.size, min_side)
        img.draft(None, (img.size[0] // factor, img.size[1] // factor))
    img.load()
    if min_side is not None and img.mode in REDUCIBLE_MODES:
        img = shrunk(img, min_side)
    img = convert(oriented(img), in_chans)
    return to_tensor(shrunk(img, min_side) if min_side is not None else img)  # palette, 1- and 16-bit: converted first


REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F")  # pixels Pillow's reduce() can average


def reduction(size: tuple[int, int], min_side: int) -> int:
    return max(1, min(size) // max(1, min_side))


def shrunk(img: Image.Image, min_side: int) -> Image.Image:
    """`img` box-averaged by `reduction` (its EXIF data kept); the same image when that is 1."""
    factor = reduction(img.size, min_side)
    return img.reduce(factor) if factor > 1 else img


def decode(source, name: str, in_chans: int, max_pixels: int) -> torch.Tensor:
    """A file (path or binary file object) as `to_pixels` reads it; every failure of the file is BadImage."""
    img = open_image(source, name, max_pixels)
    try:
        return to_pixels(img, in_chans)
    except BadImage:
        raise
    except Exception as e:  # truncated, corrupt data, unsupported variant
        raise BadImage(name, f"cannot decode ({type(e).__name__}: {e})") from None
