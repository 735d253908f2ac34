"""A ViT's architecture as plain fields (what `config.json` stores), and the checks that refuse an impossible one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .posemb import METHODS as POSEMB_RESAMPLE_METHODS
from .posemb import VARIANTS as POSEMB_VARIANTS
from .resnet import resnet_stride

CLASSIFIERS = ("token", "gap", "map")
ATTENTIONS = ("full", "axial", "lsa")
PATCH_EMBEDDINGS = ("linear", "spt")
INTEGER_FIELDS = ("patch_size", "width", "depth", "mlp_dim", "num_heads", "in_chans", "num_classes", "reg_tokens")
# Far above any resolution a ViT is run at (the paper's largest is 518 px); beyond it the position embeddings
# alone outgrow memory.
MAX_IMAGE_SIZE = 8192
# Upper bounds on the sizes, each far above the largest ViT built (ViT-22B: width 6144, depth 48, MLP 24576, 48
# heads) and the largest label sets (ImageNet-21k: 21,843 classes): a value beyond one is a mistake, refused
# before a model of it is built (building even on the meta device takes time in proportion to the depth).
MAXIMA = {"patch_size": MAX_IMAGE_SIZE, "width": 65536, "depth": 1024, "mlp_dim": 262144, "num_heads": 4096,
          "in_chans": 1024, "num_classes": 1_000_000, "reg_tokens": 1024, "representation_size": 65536,
          "image_size": MAX_IMAGE_SIZE, "resnet_width": 64}


@dataclass
class ViTConfig:
    """Every architectural choice of a ViT, as plain fields (what `config.json` stores)."""

    patch_size: int = 16
    width: int = 768
    depth: int = 12
    mlp_dim: int = 3072
    num_heads: int = 12
    image_size: int | tuple[int, int] = 224
    in_chans: int = 3
    num_classes: int = 1000
    classifier: str = "token"  # "token": the [class] token; "gap": mean of the patch tokens; "map": attention pool
    class_token: Optional[bool] = None  # a [class] token; None: only with classifier "token"
    distill_token: bool = False  # DeiT's distillation token and its head `head_dist`
    reg_tokens: int = 0  # register tokens (Darcet et al. 2023), after [class]; no position embedding
    fc_norm: bool = False  # the final LayerNorm after pooling instead of on every token (timm's GAP models)
    layer_scale: Optional[float] = None  # LayerScale (CaiT / DeiT III): per-channel scales on each residual branch
    posemb: str = "learned_1d"  # position embeddings: see models.posemb.VARIANTS
    attention: str = "full"  # "full"; "axial" (row then column self-attention; Appendix D.6); "lsa" (locality
    # self-attention, Lee et al. 2021: full attention with no token attending to itself and a learned temperature)
    patch_embed: str = "linear"  # "linear" (the paper's); "spt" (shifted patch tokenization, Lee et al. 2021)
    representation_size: Optional[int] = None  # width of the pre-logits layer (Linear + tanh), or None
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    patch_dropout: float = 0.0  # training only: drop this fraction of patch tokens per image (PatchDropout)
    gelu: str = "exact"  # "exact" (erf) or "tanh" (the approximation flax, and so the official code, uses)
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    resnet_layers: Optional[tuple[int, ...]] = None  # hybrid: units per stage of the ResNet stem
    resnet_width: int = 1  # hybrid: ResNet width factor
    ws_eps: float = 1e-5  # hybrid: weight-standardisation epsilon (official 1e-5; timm's hybrids 1e-8)
    gn_eps: float = 1e-6  # hybrid: GroupNorm epsilon (official 1e-6; timm's hybrids 1e-5)
    ws_eps_in_sqrt: bool = False  # hybrid: standardise by sqrt(var + eps) (timm) rather than std + eps (official)
    dynamic_image_size: bool = False  # accept other input sizes, resampling position embeddings on the fly
    posemb_resample: str = "official"  # method for dynamic_image_size; see models.posemb

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))

    @property
    def stride(self) -> int:
        """Input pixels per token side: the patch size, times the ResNet's stride for a hybrid."""
        if self.resnet_layers is None:
            return self.patch_size
        return self.patch_size * resnet_stride(self.resnet_layers)  # zero stages: the root block's 4

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_hw
        return h // self.stride, w // self.stride

    @property
    def has_class_token(self) -> bool:
        return self.classifier == "token" if self.class_token is None else bool(self.class_token)

    @property
    def num_embedded_prefix_tokens(self) -> int:
        """Prefix tokens with a row of their own in the position-embedding table: [class] and distillation."""
        return int(self.has_class_token) + int(self.distill_token)

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: [class], distillation, registers."""
        return self.num_embedded_prefix_tokens + self.reg_tokens

    @property
    def whole_grid_settings(self) -> list[str]:
        """The settings that need every patch of the grid (so no subset of patch tokens: PatchDropout, MAE)."""
        return [what for what, on in (("posemb 'relative'", self.posemb == "relative"),
                                      ("attention 'axial'", self.attention == "axial")) if on]

    def validate(self) -> "ViTConfig":
        """Refuse an impossible architecture before any memory is allocated."""
        problems = self._type_problems()
        if not problems:
            problems = self._architecture_problems()
        if problems:
            raise ValueError("invalid ViT configuration: " + "; ".join(problems))
        return self

    def _type_problems(self) -> list[str]:
        problems = []
        sizes = self.image_size if isinstance(self.image_size, (tuple, list)) else (self.image_size,)
        fields = [(name, getattr(self, name)) for name in INTEGER_FIELDS] + [("image_size", s) for s in sizes]
        if self.representation_size is not None:
            fields.append(("representation_size", self.representation_size))
        for name, value in fields:
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{name} must be an integer, not {value!r}")
        for name in ("distill_token", "fc_norm", "class_token"):
            if not isinstance(getattr(self, name), bool) and not (name == "class_token" and self.class_token is None):
                problems.append(f"{name} must be true or false, not {getattr(self, name)!r}")
        if self.layer_scale is not None and (not isinstance(self.layer_scale, (int, float))
                                             or isinstance(self.layer_scale, bool)):
            problems.append(f"layer_scale must be a number (or None), not {self.layer_scale!r}")
        choices = (("classifier", CLASSIFIERS), ("posemb", POSEMB_VARIANTS), ("attention", ATTENTIONS),
                   ("patch_embed", PATCH_EMBEDDINGS), ("gelu", ("exact", "tanh")),
                   ("posemb_resample", POSEMB_RESAMPLE_METHODS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(map(repr, allowed))}, not {getattr(self, name)!r}")
        return problems

    def _architecture_problems(self) -> list[str]:
        problems = []
        for name in ("patch_size", "width", "depth", "mlp_dim", "num_heads", "in_chans"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        problems += self._size_problems()
        if self.num_heads >= 1 and self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_classes < 0:
            problems.append(f"num_classes must be >= 0, not {self.num_classes}")
        if self.reg_tokens < 0:
            problems.append(f"reg_tokens must be >= 0, not {self.reg_tokens}")
        for name in ("dropout", "attention_dropout", "drop_path", "patch_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if self.layer_scale is not None and not self.layer_scale > 0:
            problems.append(f"layer_scale must be a positive number (or None), not {self.layer_scale!r}")
        h, w = self.image_hw
        if self.patch_size >= 1 and (h % self.stride or w % self.stride):
            what = "patch size" if self.resnet_layers is None else "ResNet stride x patch size"
            problems.append(f"image size {h}x{w} is not divisible by the {what} {self.stride}")
        return problems + self._combination_problems()

    def _size_problems(self) -> list[str]:
        sizes = [(name, getattr(self, name)) for name in MAXIMA if name != "image_size"]
        sizes += [("image_size", s) for s in self.image_hw]
        problems = [f"{name} must be at most {MAXIMA[name]:,}, not {value:,}" for name, value in sizes
                    if value is not None and value > MAXIMA[name]]
        if min(self.image_hw) < 1:
            problems.append(f"image_size must be positive, not {self.image_size!r}")
        if not self.resnet_width > 0:  # a hybrid's width factor (0.5 for the smallest)
            problems.append(f"resnet_width must be positive, not {self.resnet_width}")
        for name in ("layer_norm_eps", "ws_eps", "gn_eps"):  # each keeps a denominator away from zero
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0, 1), not {getattr(self, name)}")
        if self.representation_size is not None and self.representation_size < 1:
            problems.append(f"representation_size must be a positive integer (or None), not {self.representation_size}")
        return problems

    def _combination_problems(self) -> list[str]:
        problems = []
        if self.classifier == "token" and not self.has_class_token:
            problems.append("classifier 'token' needs class_token = true")
        if self.distill_token and self.classifier != "token":
            problems.append("distill_token needs classifier 'token' (DeiT reads the [class] and distillation tokens)")
        if self.fc_norm and self.distill_token:
            problems.append("fc_norm cannot be combined with distill_token")
        if self.posemb == "learned_2d" and self.width % 2:
            problems.append(f"posemb 'learned_2d' needs an even width (two halves), not {self.width}")
        if self.posemb == "sincos_2d" and self.width % 4:
            problems.append(f"posemb 'sincos_2d' needs a width divisible by 4, not {self.width}")
        needs_grid = self.whole_grid_settings
        if needs_grid and self.patch_dropout > 0:
            problems.append(f"patch_dropout cannot be combined with {needs_grid[0]} (it needs every patch of the grid)")
        if len(needs_grid) == 2:
            problems.append("posemb 'relative' cannot be combined with attention 'axial'")
        if self.patch_embed == "spt" and self.resnet_layers is not None:
            problems.append("patch_embed 'spt' cannot be combined with a hybrid's ResNet stem (resnet_layers): it "
                            "shifts and cuts the image itself")
        elif self.patch_embed == "spt" and self.patch_size < 2:
            problems.append(f"patch_embed 'spt' needs patch_size >= 2 (it shifts the image by half a patch), "
                            f"not {self.patch_size}")
        return problems

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ViT config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("image_size", "resnet_layers"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(**d)
