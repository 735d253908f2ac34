"""RandAugment (Cubuk et al. 2020) as DeiT trains with it ("rand-m9-mstd0.5-inc1").

n ops per image, each drawn uniformly from the list and applied with probability 0.5, at
magnitude m (of 10) jittered by a normal of std `mstd`. Signed ops get a random sign, and
posterize/solarize get stronger as m grows. Runs in loader workers on one uint8 image.
"""
import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

FILL = (128, 128, 128)
MAX_M = 10.0


def _signed(rng, v):
    return -v if rng.random() < 0.5 else v


def _affine(img, matrix):
    fill = FILL[0] if img.mode == "L" else FILL
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR, fillcolor=fill)


def _enhance(cls):
    return lambda img, m, rng: cls(img).enhance(1.0 + _signed(rng, 0.9 * m))


def _solarize_add(img, m, rng):
    lut = [min(255, i + int(110 * m)) if i < 128 else i for i in range(256)] * len(img.getbands())
    return img.point(lut)


OPS = {  # name -> f(img, m in [0, 1], rng)
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Invert": lambda img, m, rng: ImageOps.invert(img),
    "Rotate": lambda img, m, rng: img.rotate(_signed(rng, 30 * m), resample=Image.Resampling.BILINEAR,
                                             fillcolor=FILL[0] if img.mode == "L" else FILL),
    "Posterize": lambda img, m, rng: ImageOps.posterize(img, max(1, 4 - int(4 * m))),
    "Solarize": lambda img, m, rng: ImageOps.solarize(img, 256 - int(256 * m)),
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, m, rng: _affine(img, (1, _signed(rng, 0.3 * m), 0, 0, 1, 0)),
    "ShearY": lambda img, m, rng: _affine(img, (1, 0, 0, _signed(rng, 0.3 * m), 1, 0)),
    "TranslateX": lambda img, m, rng: _affine(img, (1, 0, _signed(rng, 0.45 * m * img.size[0]), 0, 1, 0)),
    "TranslateY": lambda img, m, rng: _affine(img, (1, 0, 0, 0, 1, _signed(rng, 0.45 * m * img.size[1]))),
}


class RandAugment:
    def __init__(self, n: int = 2, m: float = 9.0, mstd: float = 0.5, prob: float = 0.5):
        self.n, self.m, self.mstd, self.prob = n, m, mstd, prob
        self.names = list(OPS)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """uint8 C x H x W -> uint8 C x H x W."""
        a = x.permute(1, 2, 0).numpy()
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        for name in rng.choice(self.names, self.n):
            if rng.random() >= self.prob:
                continue
            m = float(np.clip(rng.normal(self.m, self.mstd) if self.mstd > 0 else self.m, 0, MAX_M)) / MAX_M
            img = OPS[name](img, m, rng)
        out = np.asarray(img)
        return torch.from_numpy(out.reshape(out.shape[0], out.shape[1], -1).copy()).permute(2, 0, 1).contiguous()
