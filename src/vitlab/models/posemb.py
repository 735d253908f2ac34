"""Position embeddings: the variants of the paper's Appendix D.4 (Table 8), fixed sin-cos, and resampling.

    "learned_1d"  one learned vector per token (the paper's default): a (1, prefix + gh*gw, D) table
    "learned_2d"  an X- and a Y-table of width D/2 each, concatenated per patch coordinate; the [class]
                  (and distillation) token has its own learned vector
    "sincos_2d"   fixed: sin/cos of the x and y coordinates (MoCo v3 / big_vision / MAE); the [class] token
                  gets none (a zero row)
    "relative"    no embedding at the input: each attention layer adds a bias q . r(offset) to its logits
                  (RelativePositionBias below)
    "none"        no position information at all: the encoder is equivariant to permuting the patches

Each variant is a `PositionEmbedding` kind (KINDS below) that the ViT holds and calls. A kind creates its
learned tables, initialises them, gives the rows added to the tokens for a patch grid, resamples the tables
to another grid, and names them for the no-weight-decay set. The tables are parameters of the ViT itself (of
its attention layers for "relative") under the names checkpoints have always used, so state dicts,
optimiser states and EMA files keep their keys.

Resampling to another patch grid (fine-tuning at a new resolution) is defined for every variant but "none":
learned tables are interpolated on their grid, each axis table of "learned_2d" along its axis, sin-cos is
recomputed, and the relative-offset table is interpolated on the grid of offsets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

METHODS = ("official", "bilinear", "bicubic")


def resample_grid(grid: torch.Tensor, new_hw: tuple[int, int], method: str = "official") -> torch.Tensor:
    """Resample position embeddings laid out as (gh, gw, D) to (new_h, new_w, D).

    "official" is what the ViT authors' code does, `scipy.ndimage.zoom(order=1)`: bilinear with the corner
    samples kept on the corners (align_corners=True). "bilinear" and "bicubic" are timm / Hugging Face's
    half-pixel-centred resizes. A (1, g, D) grid is resampled along its one axis only.
    """
    if method not in METHODS:
        raise ValueError(f"unknown position-embedding resampling method {method!r}; expected one of {METHODS}")
    if tuple(grid.shape[:2]) == tuple(new_hw):
        return grid
    x = grid.permute(2, 0, 1).unsqueeze(0).float()
    if method == "official":
        x = F.interpolate(x, size=new_hw, mode="bilinear", align_corners=True)
    else:
        x = F.interpolate(x, size=new_hw, mode=method, align_corners=False)
    return x.squeeze(0).permute(1, 2, 0).to(grid.dtype)


def resample_posemb(
    posemb: torch.Tensor,
    old_hw: tuple[int, int],
    new_hw: tuple[int, int],
    num_prefix_tokens: int,
    method: str = "official",
) -> torch.Tensor:
    """Resample a (1, prefix + gh*gw, D) position embedding; the [class] row is kept apart, unchanged."""
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    if grid.shape[1] != old_hw[0] * old_hw[1]:
        raise ValueError(
            f"position embedding has {grid.shape[1]} patch rows, which is not a {old_hw[0]}x{old_hw[1]} grid"
        )
    grid = resample_grid(grid[0].reshape(old_hw[0], old_hw[1], -1), new_hw, method)
    return torch.cat([prefix, grid.reshape(1, new_hw[0] * new_hw[1], -1)], dim=1)


def resample_axis(table: torch.Tensor, length: int, method: str = "official") -> torch.Tensor:
    """Resample a (1, g, D/2) axis table of "learned_2d" to (1, length, D/2), along its one axis."""
    return resample_grid(table, (1, length), method)


def learned_2d(prefix: torch.Tensor | None, x_table: torch.Tensor, y_table: torch.Tensor,
               grid_hw: tuple[int, int], method: str = "official") -> torch.Tensor:
    """(1, prefix + gh*gw, D): patch (i, j) gets [x_table[j], y_table[i]]; prefix rows are their own vectors."""
    gh, gw = grid_hw
    x_table, y_table = resample_axis(x_table, gw, method)[0], resample_axis(y_table, gh, method)[0]
    grid = torch.cat([x_table[None, :, :].expand(gh, -1, -1), y_table[:, None, :].expand(-1, gw, -1)], dim=-1)
    grid = grid.reshape(1, gh * gw, -1)
    return grid if prefix is None else torch.cat([prefix, grid], dim=1)


def sincos_2d(grid_hw: tuple[int, int], width: int, num_prefix_tokens: int = 0, *, temperature: float = 10_000.0,
              like: torch.Tensor | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding, (1, prefix + gh*gw, D), prefix rows zero (on the device and in the dtype of
    `like`; computed in float64).

    big_vision's `posemb_sincos_2d` (MoCo v3's): for frequencies w_k = temperature ** (-k / (D/4 - 1)),
    k < D/4, patch (y, x) gets [sin(x w), cos(x w), sin(y w), cos(y w)]. (MAE's table divides by D/4 instead
    of D/4 - 1, a slightly different frequency ladder; an MAE checkpoint stores its table and loads as a
    "learned_1d" one.)
    """
    if width % 4:
        raise ValueError(f"sincos_2d position embeddings need a width divisible by 4, not {width}")
    gh, gw = grid_hw
    y, x = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                          indexing="ij")
    quarter = width // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1))
    x = x.reshape(-1, 1) * omega
    y = y.reshape(-1, 1) * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    table = torch.cat([table.new_zeros(num_prefix_tokens, width), table]).unsqueeze(0)
    return table.float() if like is None else table.to(like.dtype).to(like.device)


class RelativePositionBias(nn.Module):
    """The paper's relative position embedding (Appendix D.4), one per attention layer.

    Every pair of patches (query at (yq, xq), key at (yk, xk)) has an offset (yq - yk, xq - xk) with a learned
    embedding r of width D. An extra attention uses the layer's queries with these embeddings as keys; its
    logits, q . r(offset) / sqrt(d_head) per head, are a bias added to the content logits before the softmax.

    Our choice where the paper is loose: it calls this "1-dimensional relative attention" over all pairs of
    patches; we key each pair by its 2-D offset rather than by the difference of the flattened (row-major)
    indices, because a flattened offset names different displacements at once (on a 14-wide grid, 13 is both
    "13 to the right" and "one row down, one to the left") and could not be resampled to another grid. The
    offset table is then a (2gh - 1, 2gw - 1, D) grid, resampled like any position-embedding grid. Pairs
    that involve a prefix token ([class], distillation, registers) share one dedicated learned embedding.
    """

    def __init__(self, cfg):  # a ViTConfig
        super().__init__()
        gh, gw = self.grid_hw = cfg.grid_size
        self.num_heads, self.num_prefix_tokens, self.method = cfg.num_heads, cfg.num_prefix_tokens, cfg.posemb_resample
        self.offsets = nn.Parameter(torch.zeros(2 * gh - 1, 2 * gw - 1, cfg.width))
        self.prefix = nn.Parameter(torch.zeros(1, cfg.width)) if cfg.num_prefix_tokens else None

    def reset_parameters(self) -> None:
        nn.init.normal_(self.offsets, std=0.02)
        if self.prefix is not None:
            nn.init.normal_(self.prefix, std=0.02)

    def resample_(self, grid_hw: tuple[int, int], method: str) -> None:
        """Rebuild the offset table for another patch grid (interpolated on the grid of offsets)."""
        with torch.no_grad():
            table = resample_grid(self.offsets.data, (2 * grid_hw[0] - 1, 2 * grid_hw[1] - 1), method)
        self.offsets, self.grid_hw = nn.Parameter(table), grid_hw

    def keys(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """(num_heads, K, d_head): every offset's embedding (row-major over the offset grid), then the prefix one."""
        gh, gw = grid_hw
        table = resample_grid(self.offsets, (2 * gh - 1, 2 * gw - 1), self.method)
        keys = table.reshape(-1, table.shape[-1])
        if self.prefix is not None:
            keys = torch.cat([keys, self.prefix])
        return keys.view(keys.shape[0], self.num_heads, -1).transpose(0, 1)

    def forward(self, q: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """The bias (B, heads, T, T) for queries q (B, heads, T, d_head) of prefix + gh*gw tokens."""
        grid_hw = grid_hw or self.grid_hw
        keys = self.keys(grid_hw).to(q.dtype)
        logits = (q * q.shape[-1] ** -0.5) @ keys.transpose(-2, -1)  # (B, heads, T, K)
        index = relative_index(grid_hw, self.num_prefix_tokens, q.device)
        return logits.gather(-1, index.expand(q.shape[0], q.shape[1], -1, -1))


def relative_index(grid_hw: tuple[int, int], num_prefix_tokens: int, device=None) -> torch.Tensor:
    """(T, T) index into RelativePositionBias.keys: the offset of each (query, key) pair; prefix pairs last."""
    gh, gw = grid_hw
    y, x = torch.meshgrid(torch.arange(gh, device=device), torch.arange(gw, device=device), indexing="ij")
    y, x = y.reshape(-1), x.reshape(-1)
    offsets = (y[:, None] - y[None, :] + gh - 1) * (2 * gw - 1) + (x[:, None] - x[None, :] + gw - 1)
    prefix_slot = (2 * gh - 1) * (2 * gw - 1)
    T = num_prefix_tokens + gh * gw
    index = torch.full((T, T), prefix_slot, dtype=torch.long, device=device)
    index[num_prefix_tokens:, num_prefix_tokens:] = offsets
    return index


# ---- the kinds the ViT holds ------------------------------------------------------------------------------
class PositionEmbedding:
    """"none": no position information. The base of every kind: no tables, nothing added to the tokens."""

    names: tuple[str, ...] = ()  # the parameters this kind owns (position tables are not weight-decayed)

    def __init__(self):
        self.cache: dict[tuple, object] = {}  # fixed or resampled tables by grid (and device), for inference

    def add_tables(self, model: nn.Module) -> None:
        """Register the learned tables on the model (created zero; `init_tables` draws them)."""

    def init_tables(self, model: nn.Module) -> None:
        pass

    def table(self, model: nn.Module, grid_hw: tuple[int, int]) -> torch.Tensor | None:
        """(1, [class] + [distillation] + gh*gw, D), the rows added to the tokens; None when nothing is added."""
        return None

    def resample_tables(self, model: nn.Module, old_hw: tuple[int, int], new_hw: tuple[int, int],
                        method: str) -> None:
        """Resample the learned tables from the patch grid `old_hw` to `new_hw`."""
        self.cache.clear()

    def attention_bias(self, cfg) -> nn.Module | None:
        """A module each attention layer of a ViT (of ViTConfig cfg) adds to its logits, or None."""
        return None


class Learned1D(PositionEmbedding):
    """"learned_1d": one learned row per token, `pos_embed`; resampled on the patch grid for other sizes."""

    names = ("pos_embed",)

    def add_tables(self, model: nn.Module) -> None:
        cfg = model.config
        gh, gw = cfg.grid_size
        model.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_embedded_prefix_tokens + gh * gw, cfg.width))

    def init_tables(self, model: nn.Module) -> None:
        nn.init.normal_(model.pos_embed, std=0.02)

    def table(self, model: nn.Module, grid_hw: tuple[int, int]) -> torch.Tensor:
        cfg, table = model.config, model.pos_embed
        if grid_hw == cfg.grid_size:
            return table
        if model.training or torch.is_grad_enabled():  # keep the graph to the learned table
            return resample_posemb(table, cfg.grid_size, grid_hw, cfg.num_embedded_prefix_tokens,
                                   cfg.posemb_resample)
        stamp = tensor_stamp(table)  # resampled again once the learned table changes (a step, a load, .to())
        if grid_hw not in self.cache or self.cache[grid_hw][0] != stamp:
            self.cache[grid_hw] = stamp, resample_posemb(table.detach(), cfg.grid_size, grid_hw,
                                                         cfg.num_embedded_prefix_tokens, cfg.posemb_resample)
        return self.cache[grid_hw][1]

    def resample_tables(self, model: nn.Module, old_hw: tuple[int, int], new_hw: tuple[int, int],
                        method: str) -> None:
        super().resample_tables(model, old_hw, new_hw, method)
        prefix = model.config.num_embedded_prefix_tokens
        with torch.no_grad():
            table = resample_posemb(model.pos_embed.data, old_hw, new_hw, prefix, method)
        model.pos_embed = nn.Parameter(table)


def tensor_stamp(t: torch.Tensor) -> tuple:
    """What changes when a tensor's values may have: its storage, dtype, device and in-place version."""
    try:
        version = t._version
    except RuntimeError:  # an inference-mode tensor keeps no version counter
        version = None
    return t.data_ptr(), t.dtype, t.device, version


class Learned2D(PositionEmbedding):
    """"learned_2d": an X table `pos_embed_x` and a Y table `pos_embed_y` (D/2 wide each), and a learned row
    `pos_embed_prefix` for the [class] and distillation tokens."""

    names = ("pos_embed_prefix", "pos_embed_x", "pos_embed_y")

    def add_tables(self, model: nn.Module) -> None:
        cfg = model.config
        (gh, gw), D, prefix = cfg.grid_size, cfg.width, cfg.num_embedded_prefix_tokens
        model.pos_embed_prefix = nn.Parameter(torch.zeros(1, prefix, D)) if prefix else None
        model.pos_embed_x = nn.Parameter(torch.zeros(1, gw, D // 2))
        model.pos_embed_y = nn.Parameter(torch.zeros(1, gh, D // 2))

    def init_tables(self, model: nn.Module) -> None:
        for name in self.names:
            if getattr(model, name) is not None:
                nn.init.normal_(getattr(model, name), std=0.02)

    def table(self, model: nn.Module, grid_hw: tuple[int, int]) -> torch.Tensor:
        return learned_2d(model.pos_embed_prefix, model.pos_embed_x, model.pos_embed_y, grid_hw,
                          model.config.posemb_resample)

    def resample_tables(self, model: nn.Module, old_hw: tuple[int, int], new_hw: tuple[int, int],
                        method: str) -> None:
        super().resample_tables(model, old_hw, new_hw, method)
        with torch.no_grad():
            model.pos_embed_x = nn.Parameter(resample_axis(model.pos_embed_x.data, new_hw[1], method))
            model.pos_embed_y = nn.Parameter(resample_axis(model.pos_embed_y.data, new_hw[0], method))


class SinCos2D(PositionEmbedding):
    """"sincos_2d": the fixed table `sincos_2d`, computed once per grid, device and dtype; nothing learned."""

    def table(self, model: nn.Module, grid_hw: tuple[int, int]) -> torch.Tensor:
        cfg, like = model.config, next(model.patch_embed.parameters())  # its device and dtype
        key = (grid_hw, like.device, like.dtype)
        if key not in self.cache:
            self.cache[key] = sincos_2d(grid_hw, cfg.width, cfg.num_embedded_prefix_tokens, like=like)
        return self.cache[key]


class Relative(PositionEmbedding):
    """"relative": nothing at the input; a RelativePositionBias in every attention layer, which initialises
    itself with its block (`offsets`, and `prefix` for pairs with a prefix token)."""

    names = ("offsets", "prefix")

    def attention_bias(self, cfg) -> nn.Module:
        return RelativePositionBias(cfg)

    def resample_tables(self, model: nn.Module, old_hw: tuple[int, int], new_hw: tuple[int, int],
                        method: str) -> None:
        super().resample_tables(model, old_hw, new_hw, method)
        for module in model.modules():
            if isinstance(module, RelativePositionBias):
                module.resample_(new_hw, method)


KINDS: dict[str, type[PositionEmbedding]] = {"learned_1d": Learned1D, "learned_2d": Learned2D,
                                             "sincos_2d": SinCos2D, "relative": Relative,
                                             "none": PositionEmbedding}
VARIANTS = tuple(KINDS)


def position_embedding(cfg) -> PositionEmbedding:
    """The kind of position embedding that a ViTConfig's `posemb` names."""
    return KINDS[cfg.posemb]()
