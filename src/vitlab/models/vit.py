"""The Vision Transformer (Dosovitskiy et al., ICLR 2021), Section 3.1, top to bottom.

image -> patches -> linear embedding (+ [class] token, + position embeddings) -> L pre-norm encoder
blocks -> LayerNorm -> [class] token (or mean of patch tokens) -> optional pre-logits -> classifier.

Settings from the paper's ablations and its successors, each off by default: position-embedding variants
(Appendix D.4; models/posemb.py), axial attention (Appendix D.6; models/axial.py), global-average or
attention-pool (MAP) heads with or without a [class] token, DeiT's distillation token, register tokens,
LayerScale, and the small-data ViT's shifted patch tokens (models/spt.py) and locality self-attention.
The token sequence is [class] [distillation] [registers...] [patches, row-major].
The architecture is a ViTConfig (models/vit_config.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import axial
from .posemb import position_embedding
from .resnet import HybridStem
from .spt import ShiftedPatchTokenization
from .vit_config import ViTConfig


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

    def image_filters(self) -> torch.Tensor:
        """(D, C, P, P): each token's linear map from its patch's pixels (of a plain ViT)."""
        return self.proj.weight.detach()


class MultiHeadSelfAttention(nn.Module):
    """MSA with one fused qkv projection; fused SDPA kernels unless the weights are asked for.

    `relative`, the relative position embedding's bias (models/posemb.py), adds q . r(offset) to the logits.
    Locality self-attention (attention "lsa"; Lee, Lee & Song 2021) masks the diagonal, so that a token attends
    to the others only (a lone token keeps itself), and divides q . k by a learned temperature per head,
    initialised to sqrt(d_head), the paper's fixed scale.
    """

    def __init__(self, cfg: ViTConfig, relative: nn.Module | None = None):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.width // cfg.num_heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.attention_dropout = cfg.attention_dropout
        self.proj_dropout = nn.Dropout(cfg.dropout)
        self.relative = relative
        self.temperature = None
        if cfg.attention == "lsa":
            self.temperature = nn.Parameter(torch.full((cfg.num_heads,), self.head_dim**0.5))

    def forward(self, x: torch.Tensor, return_attention: bool = False, grid_hw: tuple[int, int] | None = None):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        bias = None if self.relative is None else self.relative(q, grid_hw)
        if self.temperature is not None:  # LSA: with the 1 / sqrt(d) below (and SDPA's), q . k / temperature
            q = q * (self.head_dim**0.5 / self.temperature).to(q.dtype).view(-1, 1, 1)
            bias = locality_mask(T, q, bias)
        p = self.attention_dropout if self.training else 0.0
        weights = None
        if return_attention or explicit_attention_is_faster(q):
            logits = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)
            out = F.dropout(weights, p) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        out = out.transpose(1, 2).reshape(B, T, D)
        return self.proj_dropout(self.proj(out)), weights if return_attention else None


def locality_mask(tokens: int, q: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    """The additive mask of LSA: -inf on the diagonal (added to `bias`, if any); none for a lone token."""
    if tokens < 2:
        return bias
    index = torch.arange(tokens, device=q.device)
    diagonal = index[:, None] == index[None, :]  # not torch.eye: ONNX Runtime has no boolean EyeLike
    if bias is None:
        bias = torch.zeros(tokens, tokens, dtype=q.dtype, device=q.device)
    return bias.masked_fill(diagonal, float("-inf"))


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


class LayerScale(nn.Module):
    """CaiT / DeiT III: a learned per-channel scale on a residual branch, initialised small."""

    def __init__(self, width: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.gamma = nn.Parameter(torch.full((width,), init_value))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


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
    """z' = MSA(LN(z)) + z;  z = MLP(LN(z')) + z'  (pre-norm).

    `axis` "row" / "column" makes it one of AxialViT's two blocks: the MSA runs along rows (columns) only.
    With LayerScale each branch is scaled per channel before it is added.
    """

    def __init__(self, cfg: ViTConfig, drop_path_rate: float, axis: str | None = None,
                 relative: nn.Module | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = MultiHeadSelfAttention(cfg, relative)
        self.ls1 = LayerScale(cfg.width, cfg.layer_scale) if cfg.layer_scale else None
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.ls2 = LayerScale(cfg.width, cfg.layer_scale) if cfg.layer_scale else None
        self.drop_path_rate = drop_path_rate
        self.axis = axis
        self.grid_hw, self.num_prefix_tokens = cfg.grid_size, cfg.num_prefix_tokens

    def init_extra_weights(self) -> None:
        for part in (self.attn.relative, self.ls1, self.ls2):
            if part is not None:
                part.reset_parameters()

    def forward(self, x: torch.Tensor, return_attention: bool = False, grid_hw: tuple[int, int] | None = None):
        y, weights = self.attend(self.norm1(x), return_attention, grid_hw)
        if self.ls1 is not None:
            y = self.ls1(y)
        x = x + drop_path(y, self.drop_path_rate, self.training)
        y = self.mlp(self.norm2(x))
        if self.ls2 is not None:
            y = self.ls2(y)
        x = x + drop_path(y, self.drop_path_rate, self.training)
        return x, weights

    def attend(self, x: torch.Tensor, return_attention: bool, grid_hw: tuple[int, int] | None):
        if self.axis is None:
            return self.attn(x, return_attention, grid_hw)
        P, grid_hw = self.num_prefix_tokens, grid_hw or self.grid_hw
        y, weights = self.attn(axial.to_lines(x, grid_hw, self.axis, P), return_attention)
        if weights is not None:
            weights = axial.full_attention_weights(weights, x.shape[0], grid_hw, self.axis, P)
        return axial.from_lines(y, x.shape[0], grid_hw, self.axis, P), weights


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision's MAPHead; timm's AttentionPoolLatent).

    A learned probe query attends over the tokens (its own q, k/v and output projections), then a residual
    MLP on the LayerNorm of the result: out = a + MLP(LN(a)), a = MHA(probe, tokens).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.q = nn.Linear(cfg.width, cfg.width)
        self.kv = nn.Linear(cfg.width, 2 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        heads = self.num_heads
        q = self.q(self.latent).view(1, 1, heads, D // heads).transpose(1, 2).expand(B, -1, -1, -1)
        k, v = self.kv(x).view(B, N, 2, heads, D // heads).permute(2, 0, 3, 1, 4).unbind(0)
        weights = torch.softmax((q * (D // heads) ** -0.5) @ k.transpose(-2, -1), dim=-1)  # one query: no need for SDPA
        a = self.proj((weights @ v).transpose(1, 2).reshape(B, D))
        return a + self.mlp(self.norm(a))


class VisionTransformer(nn.Module):
    """Section 3.1, Eq. 1-4: z_0 = [x_class; x_p E] + E_pos;  z'_l = MSA(LN(z_l-1)) + z_l-1;
    z_l = MLP(LN(z'_l)) + z'_l;  y = LN(z_L^0), the head's input."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.config = cfg.validate()
        self.num_classes = cfg.num_classes
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_embed = ShiftedPatchTokenization(cfg) if cfg.patch_embed == "spt" else PatchEmbedding(cfg)
        D = cfg.width
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.has_class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if cfg.distill_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, D)) if cfg.reg_tokens else None
        self.posemb = position_embedding(cfg)
        self.posemb.add_tables(self)
        self.pos_dropout = nn.Dropout(cfg.dropout)
        # stochastic depth grows linearly with depth, as in DeiT / timm
        axes = list(axial.AXES) if cfg.attention == "axial" else [None]  # AxialViT: each block becomes two
        n = cfg.depth * len(axes)
        rates = [cfg.drop_path * i / max(n - 1, 1) for i in range(n)]
        self.blocks = nn.ModuleList(EncoderBlock(cfg, r, axes[i % len(axes)], self.posemb.attention_bias(cfg))
                                    for i, r in enumerate(rates))
        self.norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if not cfg.fc_norm else None
        self.attn_pool = MAPHead(cfg) if cfg.classifier == "map" else None
        self.fc_norm = nn.LayerNorm(D, eps=cfg.layer_norm_eps) if cfg.fc_norm else None
        self.pre_logits = nn.Linear(D, cfg.representation_size) if cfg.representation_size else None
        self.num_features = cfg.representation_size or D
        self.head = nn.Linear(self.num_features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
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
        self.posemb.init_tables(self)
        self.init_extra_weights()
        self.reset_classifier(self.num_classes)

    def init_extra_weights(self) -> None:
        """The optional parts, after the paper's (so a default model draws the same random numbers as ever)."""
        if self.dist_token is not None:
            nn.init.normal_(self.dist_token, std=0.02)  # DeiT
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)  # as timm
        for block in self.blocks:
            block.init_extra_weights()
        if self.attn_pool is not None:
            nn.init.xavier_uniform_(self.attn_pool.latent.view(1, -1))  # big_vision's probe init

    def reset_classifier(self, num_classes: int) -> None:
        """A new, zero-initialised head (the paper's fine-tuning head); and distillation head, if any."""
        self.num_classes = self.config.num_classes = num_classes
        device = self.patch_embed.proj.weight.device
        self.head = zero_head(self.num_features, num_classes, device)
        if self.config.distill_token:
            self.head_dist = zero_head(self.num_features, num_classes, device)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "dist_token", "reg_token", "latent", *self.posemb.names}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, ~1/3 more compute."""
        self.grad_checkpointing = enable

    # ---- input size ---------------------------------------------------------------------------------------
    def patch_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """The (gh, gw) patch grid of images x, refused unless the model takes that size."""
        cfg, stride = self.config, self.config.stride
        if x.shape[1] != cfg.in_chans:
            raise ValueError(f"expected {cfg.in_chans} input channels, got input of shape {tuple(x.shape)}")
        if x.shape[-2] % stride or x.shape[-1] % stride:
            raise ValueError(f"input size {x.shape[-2]}x{x.shape[-1]} is not divisible by the stride {stride}")
        grid_hw = (x.shape[-2] // stride, x.shape[-1] // stride)
        if grid_hw != cfg.grid_size and not cfg.dynamic_image_size:
            raise ValueError(
                f"input of {x.shape[-2]}x{x.shape[-1]} px gives a {grid_hw[0]}x{grid_hw[1]} patch grid, but the model "
                f"was built for {cfg.image_hw[0]}x{cfg.image_hw[1]} px; pass image_size= to load_pretrained, "
                "or build it with dynamic_image_size=True"
            )
        return grid_hw

    def set_image_size(self, image_size, method: str = "official") -> None:
        """Rebuild for another input size: every learned position table is resampled to the new patch grid."""
        cfg = self.config
        old = cfg.grid_size
        cfg.image_size = image_size
        cfg.validate()
        self.posemb.cache.clear()
        if cfg.grid_size != old:
            self.posemb.resample_tables(self, old, cfg.grid_size, method)

    def patch_position_embeddings(self) -> torch.Tensor:
        """(gh*gw, D): the position embedding each patch of the model's grid gets (for inspection)."""
        table = self.posemb.table(self, self.config.grid_size)
        if table is None:
            raise ValueError(f"a model with posemb {self.config.posemb!r} adds no position embedding to its "
                             "patches, so there is no table to compare")
        return table[0, self.config.num_embedded_prefix_tokens:]

    # ---- forward --------------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, *, patch_transform=None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """z_0 = [x_class; x_dist; x_p E] + E_pos, registers inserted after the embedded tokens, then dropout.

        Hooks for training objectives: `patch_transform` maps the patch embeddings x_p E (B, N, D) before the
        [class] token and position embeddings join them (masked patch prediction corrupts them here); `keep`
        (B, K) patch indices keeps only those patch tokens, after position embeddings (MAE's visible patches).
        """
        grid_hw = self.patch_grid(x)
        tokens = self.patch_embed(x)
        if patch_transform is not None:
            tokens = patch_transform(tokens)
        B = x.shape[0]
        prefix = [t for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            tokens = torch.cat([t.expand(B, -1, -1).to(tokens.dtype) for t in prefix] + [tokens], dim=1)
        posemb = self.posemb.table(self, grid_hw)
        if posemb is not None:
            tokens = tokens + posemb.to(tokens.dtype)
        if self.reg_token is not None:
            n = len(prefix)
            registers = self.reg_token.expand(B, -1, -1).to(tokens.dtype)
            tokens = torch.cat([tokens[:, :n], registers, tokens[:, n:]], dim=1)
        if keep is not None:
            tokens = keep_patches(tokens, keep, self.num_prefix_tokens)
        elif self.training and self.config.patch_dropout > 0:
            tokens = drop_patches(tokens, self.config.patch_dropout, self.num_prefix_tokens)
        return self.pos_dropout(tokens)

    def forward_features(self, x: torch.Tensor, return_attention: bool = False, **embed_hooks):
        """The final tokens (B, T, D), normalised unless fc_norm; with return_attention each layer's weights.

        `embed_hooks` (patch_transform, keep) go to `embed`, for training objectives.
        """
        grid_hw = self.patch_grid(x)
        if self.config.whole_grid_settings and embed_hooks.get("keep") is not None:
            raise ValueError(f"{self.config.whole_grid_settings[0]} needs every patch of the grid; a subset of "
                             "patch tokens (keep=) needs absolute position embeddings and full attention")
        x = self.embed(x, **embed_hooks)
        attentions = []
        for block in self.blocks:
            if self.grad_checkpointing and self.training and not return_attention:
                x, weights = checkpoint(block, x, False, grid_hw, use_reentrant=False)
            else:
                x, weights = block(x, return_attention, grid_hw)
            attentions.append(weights)
        if self.norm is not None:
            x = self.norm(x)
        return (x, attentions) if return_attention else x

    def representation(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image representation before the classifier: the [class] token (with DeiT's, the [class] and
        distillation tokens: (B, 2, D)), the mean of the patch tokens, or the MAP head over them; then the
        pre-logits layer, if any."""
        if self.config.classifier == "token":
            x = tokens[:, 0] if self.dist_token is None else tokens[:, :2]
        else:
            patches = tokens[:, self.num_prefix_tokens:]
            x = patches.mean(dim=1) if self.config.classifier == "gap" else self.attn_pool(patches)
            x = x if self.fc_norm is None else self.fc_norm(x)
        return x if self.pre_logits is None else torch.tanh(self.pre_logits(x))

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The image representation (pre_logits=True) or the logits, from forward_features' tokens.

        With a distillation token: the mean of the two tokens' representations, and the mean of the two heads'
        logits, as DeiT evaluates (`forward_heads` gives both heads' logits).
        """
        x = self.representation(tokens)
        if self.dist_token is None:
            return x if pre_logits else self.head(x)
        if pre_logits:
            return x.mean(dim=1)
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeiT: (class-head logits, distillation-head logits) for images x, in any mode."""
        if self.dist_token is None:
            raise ValueError("forward_heads needs a model with distill_token = true")
        pooled = self.representation(self.forward_features(x))
        return self.head(pooled[:, 0]), self.head_dist(pooled[:, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def zero_head(features: int, num_classes: int, device=None) -> nn.Module:
    if not num_classes:
        return nn.Identity()
    head = nn.Linear(features, num_classes, device=device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def lecun_normal_(weight: torch.Tensor) -> None:
    """flax's default kernel init: truncated normal with variance 1 / fan_in."""
    fan_in = weight[0].numel()
    # a normal truncated at 2 std has std 0.87962566, hence the correction (as in jax.nn.initializers)
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std)
