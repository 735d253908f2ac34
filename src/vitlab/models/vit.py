"""The Vision Transformer (Dosovitskiy et al., ICLR 2021), Section 3.1, top to bottom.

image -> patches -> linear embedding (+ [class] token, + position embeddings) -> L pre-norm encoder
blocks -> LayerNorm -> [class] token (or mean of patch tokens) -> optional pre-logits -> classifier.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .posemb import resample_posemb
from .resnet import HybridStem


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
    classifier: str = "token"  # "token": the [class] token; "gap": global average of the patch tokens
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
        return self.patch_size * 4 * 2 ** (len(self.resnet_layers) - 1)

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = self.image_hw
        return h // self.stride, w // self.stride

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.classifier == "token" else 0

    def validate(self) -> "ViTConfig":
        """Refuse an impossible architecture before any memory is allocated."""
        problems = []
        if self.classifier not in ("token", "gap"):
            problems.append(f"classifier must be 'token' or 'gap', not {self.classifier!r}")
        if self.gelu not in ("exact", "tanh"):
            problems.append(f"gelu must be 'exact' or 'tanh', not {self.gelu!r}")
        for name in ("patch_size", "width", "depth", "mlp_dim", "num_heads", "in_chans"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if self.num_heads >= 1 and self.width % self.num_heads:
            problems.append(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.num_classes < 0:
            problems.append(f"num_classes must be >= 0, not {self.num_classes}")
        for name in ("dropout", "attention_dropout", "drop_path", "patch_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), not {getattr(self, name)}")
        h, w = self.image_hw
        if self.patch_size >= 1 and (h % self.stride or w % self.stride):
            what = "patch size" if self.resnet_layers is None else "ResNet stride x patch size"
            problems.append(f"image size {h}x{w} is not divisible by the {what} {self.stride}")
        if problems:
            raise ValueError("invalid ViT configuration: " + "; ".join(problems))
        return self

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


class PatchEmbedding(nn.Module):
    """Cut the image into P x P patches and project each to width D (a conv with kernel = stride = P).

    For the hybrid, the "image" is the ResNet stem's feature map and the patches are 1x1.
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.backbone = None
        in_chans = cfg.in_chans
        if cfg.resnet_layers is not None:
            self.backbone = HybridStem(cfg.resnet_layers, cfg.resnet_width, cfg.in_chans, cfg.ws_eps, cfg.gn_eps,
                                       cfg.ws_eps_in_sqrt)
            in_chans = self.backbone.out_chans
        self.proj = nn.Conv2d(in_chans, cfg.width, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            x = self.backbone(x)
        x = self.proj(x)  # (B, D, gh, gw)
        return x.flatten(2).transpose(1, 2)  # (B, gh*gw, D), row-major over the grid


class MultiHeadSelfAttention(nn.Module):
    """MSA with one fused qkv projection; fused SDPA kernels unless the weights are asked for."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.width // cfg.num_heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.attention_dropout = cfg.attention_dropout
        self.proj_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.attention_dropout if self.training else 0.0
        weights = None
        if return_attention or explicit_attention_is_faster(q):
            weights = torch.softmax((q * self.head_dim**-0.5) @ k.transpose(-2, -1), dim=-1)
            out = F.dropout(weights, p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, T, D)
        return self.proj_dropout(self.proj(out)), weights if return_attention else None


def explicit_attention_is_faster(q: torch.Tensor) -> bool:
    """On CPU in bf16, for ViT-length sequences, softmax(q k^T) v as three ops beats the fused SDPA kernel.

    (Its bf16 CPU kernel runs at a fraction of matmul speed; measured in BENCHMARKS.md, "Figures behind the
    code's choices".) fp32, GPUs and long sequences, where the T x T matrix would cost memory, keep SDPA.
    """
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.shape[-2] <= 256


class MLP(nn.Module):
    """Linear(D, mlp) - GELU - Dropout - Linear(mlp, D) - Dropout."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.act = nn.GELU(approximate="tanh" if cfg.gelu == "tanh" else "none")
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act(self.fc1(x)))))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a sample's whole residual branch with probability p (rescaling the rest)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def random_patch_subset(batch: int, num_patches: int, keep: int, device=None, generator=None) -> torch.Tensor:
    """(batch, keep) indices: for each image, `keep` of its `num_patches` patches drawn without replacement."""
    return torch.rand(batch, num_patches, device=device, generator=generator).argsort(dim=1)[:, :keep]


def keep_patches(tokens: torch.Tensor, kept: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The prefix tokens and, for each image, the patch tokens at `kept` (B, K), in that order."""
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    patches = patches.gather(1, kept.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat([prefix, patches], dim=1) if num_prefix_tokens else patches


def drop_patches(tokens: torch.Tensor, rate: float, num_prefix_tokens: int) -> torch.Tensor:
    """PatchDropout (Liu et al., 2022): keep a random subset of each image's patch tokens, and the [class] token.

    Position embeddings are already added, so the kept tokens still know where they are; training costs
    about the kept fraction of the compute, and evaluation sees every token. (MAE's masking is the same
    selection: see training/objectives/mae.py.)
    """
    B, N = tokens.shape[0], tokens.shape[1] - num_prefix_tokens
    kept = random_patch_subset(B, N, max(1, round(N * (1.0 - rate))), tokens.device)
    return keep_patches(tokens, kept, num_prefix_tokens)


class EncoderBlock(nn.Module):
    """z' = MSA(LN(z)) + z;  z = MLP(LN(z')) + z'  (pre-norm)."""

    def __init__(self, cfg: ViTConfig, drop_path_rate: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = MultiHeadSelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        y, weights = self.attn(self.norm1(x), return_attention)
        x = x + drop_path(y, self.drop_path_rate, self.training)
        x = x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)
        return x, weights


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg.validate()
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_embed = PatchEmbedding(cfg)
        gh, gw = cfg.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.classifier == "token" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + gh * gw, cfg.width))
        self.pos_dropout = nn.Dropout(cfg.dropout)
        # stochastic depth grows linearly with depth, as in DeiT / timm
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(EncoderBlock(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.pre_logits = nn.Linear(cfg.width, cfg.representation_size) if cfg.representation_size else None
        self.num_features = cfg.representation_size or cfg.width
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        self._posemb_cache: dict[tuple[int, int], torch.Tensor] = {}
        self.init_weights()

    # ---- initialisation (the official code's) ---------------------------------------------------------
    def init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is None:  # qkv_bias=False
                    continue
                if ".mlp." in f".{name}.":
                    nn.init.normal_(m.bias, std=1e-6)
                else:
                    nn.init.zeros_(m.bias)
        if self.pre_logits is not None:  # flax's default Dense init: LeCun normal
            lecun_normal_(self.pre_logits.weight)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.reset_classifier(self.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, zero-initialised head (the paper's fine-tuning head)."""
        self.num_classes = self.config.num_classes = num_classes
        device = self.pos_embed.device
        self.head = nn.Linear(self.num_features, num_classes, device=device) if num_classes else nn.Identity()
        if num_classes:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, ~1/3 more compute."""
        self.grad_checkpointing = enable

    # ---- forward --------------------------------------------------------------------------------------
    def position_embedding(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        if grid_hw == self.config.grid_size:
            return self.pos_embed
        if not self.config.dynamic_image_size:
            h, w = (g * self.config.stride for g in grid_hw)
            raise ValueError(
                f"input of {h}x{w} px gives a {grid_hw[0]}x{grid_hw[1]} patch grid, but the model was built for "
                f"{self.config.image_hw[0]}x{self.config.image_hw[1]} px; pass image_size= to load_pretrained, "
                "or build it with dynamic_image_size=True"
            )
        if self.training or torch.is_grad_enabled():  # keep the graph to the learned table
            return resample_posemb(self.pos_embed, self.config.grid_size, grid_hw, self.num_prefix_tokens,
                                   self.config.posemb_resample)
        if grid_hw not in self._posemb_cache or self._posemb_cache[grid_hw].device != self.pos_embed.device:
            self._posemb_cache[grid_hw] = resample_posemb(
                self.pos_embed.detach(), self.config.grid_size, grid_hw, self.num_prefix_tokens,
                self.config.posemb_resample)
        return self._posemb_cache[grid_hw]

    def embed(self, x: torch.Tensor, *, patch_transform=None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """z_0 = [x_class; x_p E] + E_pos, then dropout.

        Hooks for training objectives: `patch_transform` maps the patch embeddings x_p E (B, N, D) before the
        [class] token and position embeddings join them (masked patch prediction corrupts them here); `keep`
        (B, K) patch indices keeps only those patch tokens, after position embeddings (MAE's visible patches).
        """
        if x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected {self.config.in_chans} input channels, got input of shape {tuple(x.shape)}")
        stride = self.config.stride
        grid_hw = (x.shape[-2] // stride, x.shape[-1] // stride)
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise ValueError(f"input size {x.shape[-2]}x{x.shape[-1]} is not divisible by the stride {stride}")
        tokens = self.patch_embed(x)
        if patch_transform is not None:
            tokens = patch_transform(tokens)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = tokens + self.position_embedding(grid_hw).to(tokens.dtype)
        if keep is not None:
            tokens = keep_patches(tokens, keep, self.num_prefix_tokens)
        elif self.training and self.config.patch_dropout > 0:
            tokens = drop_patches(tokens, self.config.patch_dropout, self.num_prefix_tokens)
        return self.pos_dropout(tokens)

    def forward_features(self, x: torch.Tensor, return_attention: bool = False, **embed_hooks):
        """The final normalised tokens (B, T, D); with return_attention also each layer's (B, heads, T, T).

        `embed_hooks` (patch_transform, keep) go to `embed`, for training objectives.
        """
        x = self.embed(x, **embed_hooks)
        attentions = []
        for block in self.blocks:
            if self.grad_checkpointing and self.training and not return_attention:
                x, weights = checkpoint(block, x, use_reentrant=False)
            else:
                x, weights = block(x, return_attention)
            attentions.append(weights)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.config.classifier == "token":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The image representation (pre_logits=True) or the logits, from forward_features' tokens."""
        x = self.pool(tokens)
        if self.pre_logits is not None:
            x = torch.tanh(self.pre_logits(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def lecun_normal_(weight: torch.Tensor) -> None:
    """flax's default kernel init: truncated normal with variance 1 / fan_in."""
    fan_in = weight[0].numel()
    # a normal truncated at 2 std has std 0.87962566, hence the correction (as in jax.nn.initializers)
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)
