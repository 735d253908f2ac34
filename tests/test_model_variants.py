"""The model settings beyond the paper's default ViT: position-embedding variants (Appendix D.4), axial attention
(Appendix D.6), pooling (token / GAP / MAP), DeiT's distillation token, register tokens, LayerScale.

Each variant is checked against a reference forward pass written here with explicit loops and einsums from the
model's parameters (by name), in float64.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import vitlab
from vitlab.models import count_flops, count_parameters, model_config
from vitlab.models.posemb import relative_index, sincos_2d

GRID = 4  # 16 px images, 4 px patches


def small(**overrides):
    base = dict(width=16, depth=2, mlp_dim=32, num_heads=2, image_size=16, patch_size=4, num_classes=3)
    base.update(overrides)
    return base


def build(**overrides):
    return vitlab.create_model("ViT-Ti/16", **small(**overrides))


def randomise(model, seed=0):
    """Give every parameter (zero-initialised heads and tokens included) a random value, so nothing cancels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


# ---- the reference ---------------------------------------------------------------------------------------
def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def sincos_reference(gh, gw, width):
    quarter = width // 4
    rows = []
    for y in range(gh):
        for x in range(gw):
            freqs = [10_000 ** (-k / (quarter - 1)) for k in range(quarter)]
            rows.append([math.sin(x * f) for f in freqs] + [math.cos(x * f) for f in freqs]
                        + [math.sin(y * f) for f in freqs] + [math.cos(y * f) for f in freqs])
    return torch.tensor(rows, dtype=torch.float64)


def reference_posemb(model, gh, gw):
    """(prefix rows, patch rows) of the position embedding, built entry by entry."""
    cfg, D = model.config, model.config.width
    P = cfg.num_embedded_prefix_tokens
    if cfg.posemb == "learned_1d":
        return model.pos_embed[0, :P], model.pos_embed[0, P:]
    if cfg.posemb == "learned_2d":
        patches = torch.stack([torch.cat([model.pos_embed_x[0, j], model.pos_embed_y[0, i]])
                               for i in range(gh) for j in range(gw)])
        prefix = model.pos_embed_prefix[0] if P else patches[:0]
        return prefix, patches
    if cfg.posemb == "sincos_2d":
        return torch.zeros(P, D, dtype=torch.float64), sincos_reference(gh, gw, D)
    return torch.zeros(P, D, dtype=torch.float64), torch.zeros(gh * gw, D, dtype=torch.float64)


def reference_embed(model, x):
    cfg = model.config
    p = cfg.patch_size
    B, gh, gw = x.shape[0], x.shape[2] // p, x.shape[3] // p
    conv = model.patch_embed.proj
    patches = torch.stack([
        x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(B, -1) @ conv.weight.reshape(cfg.width, -1).T + conv.bias
        for i in range(gh) for j in range(gw)], dim=1)
    prefix_pos, patch_pos = reference_posemb(model, gh, gw)
    prefix = [t[0, 0] for t in (model.cls_token, model.dist_token) if t is not None]
    tokens = [t + prefix_pos[n] for n, t in enumerate(prefix)]
    registers = model.reg_token[0] if cfg.reg_tokens else []
    tokens = [t.expand(B, -1) for t in tokens] + [r.expand(B, -1) for r in registers]
    return torch.cat([torch.stack(tokens, dim=1), patches + patch_pos] if tokens else [patches + patch_pos], dim=1)


def reference_relative_bias(q, relative, grid, P):
    """bias[b, h, i, j] = q_i . r(offset(i, j)) / sqrt(d) per head; pairs with a prefix token use r_prefix."""
    B, T, H, d = q.shape
    gh, gw = grid
    bias = torch.zeros(B, H, T, T, dtype=q.dtype)
    for i in range(T):
        for j in range(T):
            if i < P or j < P:
                r = relative.prefix[0]
            else:
                (yi, xi), (yj, xj) = divmod(i - P, gw), divmod(j - P, gw)
                r = relative.offsets[yi - yj + gh - 1, xi - xj + gw - 1]
            bias[:, :, i, j] = torch.einsum("bhd,hd->bh", q[:, i], r.view(H, d)) / math.sqrt(d)
    return bias


def reference_attention(x, attn, grid=None, P=0):
    B, T, D = x.shape
    H = attn.num_heads
    d = D // H
    q, k, v = linear(x, attn.qkv).view(B, T, 3, H, d).unbind(2)
    logits = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)
    if attn.relative is not None:
        logits = logits + reference_relative_bias(q, attn.relative, grid, P)
    weights = logits.softmax(-1)
    return linear(torch.einsum("bhij,bjhd->bihd", weights, v).reshape(B, T, D), attn.proj)


def reference_axial_attention(x, attn, grid, P, axis):
    """Each row (column) with the prefix tokens in front is a sequence; prefix outputs averaged over lines."""
    gh, gw = grid
    out = torch.zeros_like(x)
    lines = range(gh) if axis == "row" else range(gw)
    for line in lines:
        members = [P + line * gw + c for c in range(gw)] if axis == "row" else [P + r * gw + line for r in range(gh)]
        seq = torch.cat([x[:, :P], x[:, members]], dim=1)
        y = reference_attention(seq, attn)
        out[:, members] = y[:, P:]
        out[:, :P] += y[:, :P] / len(lines)
    return out


def reference_mlp(x, mlp):
    return linear(F.gelu(linear(x, mlp.fc1), approximate=mlp.act.approximate), mlp.fc2)


def reference_map(tokens, head):
    B, N, D = tokens.shape
    H = head.num_heads
    d = D // H
    q = linear(head.latent[0, 0], head.q)
    k, v = linear(tokens, head.kv).split(D, dim=-1)
    out = []
    for h in range(H):
        s = slice(h * d, (h + 1) * d)
        w = (k[:, :, s] @ q[s] / math.sqrt(d)).softmax(-1)  # (B, N)
        out.append(torch.einsum("bn,bnd->bd", w, v[:, :, s]))
    a = linear(torch.cat(out, dim=-1), head.proj)
    return a + reference_mlp(F.layer_norm(a, (D,), head.norm.weight, head.norm.bias, head.norm.eps), head.mlp)


def layer_norm(x, ln):
    return F.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, ln.eps)


def reference_logits(model, x):
    cfg = model.config
    grid = (x.shape[2] // cfg.patch_size, x.shape[3] // cfg.patch_size)
    P = cfg.num_prefix_tokens
    z = reference_embed(model, x)
    for block in model.blocks:
        y = layer_norm(z, block.norm1)
        y = reference_attention(y, block.attn, grid, P) if block.axis is None else \
            reference_axial_attention(y, block.attn, grid, P, block.axis)
        z = z + (y * block.ls1.gamma if block.ls1 is not None else y)
        y = reference_mlp(layer_norm(z, block.norm2), block.mlp)
        z = z + (y * block.ls2.gamma if block.ls2 is not None else y)
    if model.norm is not None:
        z = layer_norm(z, model.norm)
    if cfg.classifier == "token" and cfg.distill_token:
        return (linear(z[:, 0], model.head) + linear(z[:, 1], model.head_dist)) / 2
    if cfg.classifier == "token":
        return linear(z[:, 0], model.head)
    pooled = z[:, P:].mean(1) if cfg.classifier == "gap" else reference_map(z[:, P:], model.attn_pool)
    if model.fc_norm is not None:
        pooled = layer_norm(pooled, model.fc_norm)
    return linear(pooled, model.head)


VARIANTS = {
    "default": {},
    "posemb-none": dict(posemb="none"),
    "posemb-learned_2d": dict(posemb="learned_2d"),
    "posemb-sincos_2d": dict(posemb="sincos_2d"),
    "posemb-relative": dict(posemb="relative"),
    "posemb-relative-gap": dict(posemb="relative", classifier="gap", reg_tokens=1),
    "axial": dict(attention="axial"),
    "axial-gap-no-prefix": dict(attention="axial", classifier="gap", posemb="learned_2d"),
    "distill": dict(distill_token=True),
    "registers": dict(reg_tokens=3),
    "gap-with-class-token": dict(classifier="gap", class_token=True, reg_tokens=2, fc_norm=True),
    "map": dict(classifier="map"),
    "map-sincos": dict(classifier="map", posemb="sincos_2d", gelu="tanh"),
    "layer-scale": dict(layer_scale=0.1),
    "everything": dict(distill_token=True, reg_tokens=2, layer_scale=1e-2, posemb="learned_2d", attention="axial"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_equals_the_hand_written_reference(variant):
    model = randomise(build(**VARIANTS[variant]).double().eval())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_logits(model, x), rtol=1e-9, atol=1e-9)
        tokens, attentions = model.forward_features(x, return_attention=True)  # the explicit path agrees too
        torch.testing.assert_close(model.forward_head(tokens), model(x), rtol=1e-9, atol=1e-9)
    for a in attentions:  # for axial layers: the equivalent full matrix; rows sum to one either way
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1], dtype=a.dtype))


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_saves_and_loads_with_equal_logits(variant, tmp_path):
    model = randomise(build(**VARIANTS[variant])).eval()
    vitlab.save_pretrained(model, tmp_path / "m")
    loaded = vitlab.load_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # equal up to rounding: a matmul's result may depend on its operands' alignment
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-6, atol=1e-6)


def test_default_model_keeps_its_parameter_names_and_config_reads_old_files():
    model = build()
    assert list(model.state_dict())[:4] == ["cls_token", "pos_embed", "patch_embed.proj.weight",
                                             "patch_embed.proj.bias"]
    assert not any(k.startswith(("dist_token", "reg_token", "attn_pool", "fc_norm", "head_dist")) or ".ls" in k
                   or "relative" in k for k in model.state_dict())
    old = {k: v for k, v in model.config.to_dict().items()
           if k not in ("class_token", "distill_token", "reg_tokens", "fc_norm", "layer_scale", "posemb", "attention")}
    assert vitlab.models.ViTConfig.from_dict(old) == model.config
    gap = vitlab.models.ViTConfig.from_dict({**old, "classifier": "gap"})
    assert gap.num_prefix_tokens == 0  # an older "gap" config still means: no [class] token


# ---- position embeddings ----------------------------------------------------------------------------------
def permute_patches(x, perm, p=4):
    B, C, H, W = x.shape
    g = W // p
    patches = x.view(B, C, H // p, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, C, p, p)
    patches = patches[:, perm]
    return patches.view(B, H // p, g, C, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def test_without_position_embeddings_the_encoder_is_permutation_equivariant():
    model = randomise(build(posemb="none", classifier="gap").double().eval())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    perm = torch.randperm(GRID * GRID)
    with torch.no_grad():
        tokens, shuffled = model.forward_features(x), model.forward_features(permute_patches(x, perm))
        torch.testing.assert_close(shuffled, tokens[:, perm])
        torch.testing.assert_close(model(permute_patches(x, perm)), model(x))
    positional = randomise(build(classifier="gap").double().eval())
    with torch.no_grad():
        assert not torch.allclose(positional(permute_patches(x, perm)), positional(x))


def test_learned_2d_rows_share_the_y_half_and_columns_the_x_half():
    model = randomise(build(posemb="learned_2d", image_size=(16, 24)))
    assert "pos_embed" not in model.state_dict()
    assert model.pos_embed_x.shape == (1, 6, 8) and model.pos_embed_y.shape == (1, 4, 8)
    assert model.pos_embed_prefix.shape == (1, 1, 16)
    grid = model.patch_position_embeddings().detach().view(4, 6, 16)
    for i in range(4):
        for j in range(6):
            assert torch.equal(grid[i, j, :8], model.pos_embed_x[0, j].detach())  # same column: same X half
            assert torch.equal(grid[i, j, 8:], model.pos_embed_y[0, i].detach())  # same row: same Y half
    assert count_parameters("ViT-Ti/16", **small(posemb="learned_2d")) == \
        count_parameters("ViT-Ti/16", **small()) - (1 + 16) * 16 + 16 + 2 * 4 * 8


def test_sincos_values_match_the_formula_and_are_not_parameters():
    model = build(posemb="sincos_2d")
    table = model.posemb.table(model, (4, 4))
    torch.testing.assert_close(table[0, 1:].double(), sincos_reference(4, 4, 16), rtol=1e-6, atol=1e-6)
    assert torch.equal(table[0, 0], torch.zeros(16))  # the [class] token gets none
    assert not any("pos" in name for name, _ in model.named_parameters())
    assert "pos_embed" not in model.state_dict()
    assert sincos_2d((2, 3), 8).shape == (1, 6, 8)


def test_relative_bias_is_the_query_dotted_with_the_offset_embedding():
    model = randomise(build(posemb="relative").double())
    attn = model.blocks[0].attn
    q = torch.randn(2, 2, 1 + 16, 8, dtype=torch.float64)  # (B, heads, T, d)
    bias = attn.relative(q, (4, 4))
    expected = reference_relative_bias(q.transpose(1, 2), attn.relative, (4, 4), 1)
    torch.testing.assert_close(bias, expected)
    index = relative_index((4, 4), 1)
    assert index[1 + 0, 1 + 5] == index[1 + 10, 1 + 15]  # (0,0)->(1,1) and (2,2)->(3,3): the same offset
    assert index[1 + 0, 1 + 5] != index[1 + 5, 1 + 0]
    assert (index[0] == index[0, 0]).all() and (index[:, 0] == index[0, 0]).all()  # one embedding for [class]
    assert attn.relative.offsets.shape == (7, 7, 16)
    assert "pos_embed" not in model.state_dict()
    assert build(posemb="relative", classifier="gap").blocks[0].attn.relative.prefix is None  # no prefix tokens


def test_posemb_helper_for_inspection_and_clear_errors():
    from vitlab.inspection.posemb import posemb_similarity
    for posemb in ("learned_1d", "learned_2d", "sincos_2d"):
        assert posemb_similarity(build(posemb=posemb)).shape == (4, 4, 4, 4)
    for posemb in ("none", "relative"):
        with pytest.raises(ValueError, match=f"posemb '{posemb}' adds no position embedding"):
            build(posemb=posemb).patch_position_embeddings()


def interp_axis(table, new_len, axis):
    """Linear resampling with the end samples kept on the ends (scipy.ndimage.zoom order=1), one axis."""
    old = np.asarray(table, dtype=np.float64)
    src = np.linspace(0, old.shape[axis] - 1, new_len)
    return np.apply_along_axis(lambda v: np.interp(src, np.arange(len(v)), v), axis, old)


@pytest.mark.parametrize("posemb", ["learned_1d", "learned_2d", "sincos_2d", "relative", "none"])
def test_each_variant_resamples_to_a_new_image_size(posemb, tmp_path):
    model = randomise(build(posemb=posemb)).eval()
    vitlab.save_pretrained(model, tmp_path / "m")
    bigger = vitlab.load_pretrained(tmp_path / "m", image_size=24).eval()
    assert bigger.config.grid_size == (6, 6)
    if posemb == "learned_2d":
        for name in ("pos_embed_x", "pos_embed_y"):
            expected = interp_axis(getattr(model, name).detach()[0], 6, axis=0)
            np.testing.assert_allclose(getattr(bigger, name).detach()[0].numpy(), expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(bigger.pos_embed_prefix, model.pos_embed_prefix)
    if posemb == "sincos_2d":
        torch.testing.assert_close(bigger.patch_position_embeddings().double(), sincos_reference(6, 6, 16))
    if posemb == "relative":
        for old, new in zip(model.blocks, bigger.blocks):
            table = old.attn.relative.offsets.detach()
            expected = interp_axis(interp_axis(table, 11, axis=0), 11, axis=1)
            np.testing.assert_allclose(new.attn.relative.offsets.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
            assert torch.equal(new.attn.relative.prefix, old.attn.relative.prefix)
    x = torch.randn(2, 3, 24, 24)
    dynamic = vitlab.load_pretrained(tmp_path / "m", dynamic_image_size=True).eval()
    with torch.no_grad():
        assert bigger(x).shape == (2, 3)
        torch.testing.assert_close(dynamic(x), bigger(x))  # on the fly = resampled once


def test_axial_blocks_alternate_rows_and_columns_and_one_row_is_a_full_block():
    model = build(attention="axial")
    assert [b.axis for b in model.blocks] == ["row", "column", "row", "column"]
    # one row of patches: a row block is an ordinary block, so the whole first row block equals a full one
    wide = randomise(build(attention="axial", image_size=(4, 16)).double().eval())
    full = build(image_size=(4, 16)).double().eval()
    full.blocks[0].load_state_dict(wide.blocks[0].state_dict())
    x = randomise(build(image_size=(4, 16)).double()).embed(torch.randn(2, 3, 4, 16, dtype=torch.float64))
    with torch.no_grad():
        torch.testing.assert_close(wide.blocks[0](x, grid_hw=(1, 4))[0], full.blocks[0](x)[0])


def test_axial_attention_matrix_reproduces_the_layer_output():
    model = randomise(build(attention="axial", reg_tokens=1).double().eval())
    x = model.embed(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    block = model.blocks[1]  # a column block
    y = block.norm1(x)
    with torch.no_grad():
        out, full = block.attend(y, True, (4, 4))
        B, T, D = y.shape
        v = linear(y, block.attn.qkv).view(B, T, 3, 2, 8)[:, :, 2]  # (B, T, heads, d)
        mixed = torch.einsum("bhij,bjhd->bihd", full, v).reshape(B, T, D)
        torch.testing.assert_close(linear(mixed, block.attn.proj), out)
    assert full[0, 0, 1 + 2 + 0, 1 + 2 + 1].item() == 0  # (0,0) and (0,1): same row, not the same column
    assert full[0, 0, 1 + 2 + 0, 1 + 2 + 4].item() > 0  # (0,0) and (1,0): same column


# ---- pooling, tokens, LayerScale -----------------------------------------------------------------------------
def test_distillation_token_heads_in_training_and_evaluation():
    model = randomise(build(distill_token=True))
    assert model.pos_embed.shape == (1, 2 + 16, 16) and model.num_prefix_tokens == 2
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        cls_logits, dist_logits = model.forward_heads(x)
        torch.testing.assert_close(model(x), (cls_logits + dist_logits) / 2)
        tokens = model.forward_features(x)
        torch.testing.assert_close(cls_logits, model.head(tokens[:, 0]))
        torch.testing.assert_close(dist_logits, model.head_dist(tokens[:, 1]))
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, :2].mean(1))
    model.train()
    assert isinstance(model(x), torch.Tensor)  # plain fine-tuning trains the averaged heads, as timm's
    both = model.forward_heads(x)  # the one way to both heads, in training mode too
    assert both[0].shape == both[1].shape == (2, 3) and not hasattr(model, "set_distilled_training")
    model.reset_classifier(7)
    assert model.head_dist.out_features == 7 and torch.count_nonzero(model.head_dist.weight) == 0


def test_distillation_token_is_resampled_like_the_class_token(tmp_path):
    model = randomise(build(distill_token=True))
    vitlab.save_pretrained(model, tmp_path / "m")
    bigger = vitlab.load_pretrained(tmp_path / "m", image_size=24, num_classes=4)
    assert bigger.pos_embed.shape == (1, 2 + 36, 16)
    assert torch.equal(bigger.pos_embed[:, :2], model.pos_embed[:, :2])
    assert torch.equal(bigger.dist_token, model.dist_token) and bigger.head_dist.out_features == 4


def test_register_tokens_follow_the_class_token_without_position_embeddings():
    model = randomise(build(reg_tokens=4)).eval()
    assert model.num_prefix_tokens == 5 and model.pos_embed.shape == (1, 1 + 16, 16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        z = model.embed(x)
        assert z.shape == (2, 1 + 4 + 16, 16)
        torch.testing.assert_close(z[:, 0], (model.cls_token + model.pos_embed[:, 0])[0].expand(2, -1))
        assert torch.equal(z[:, 1:5], model.reg_token.expand(2, -1, -1))  # no position embedding added
        assert model.forward_features(x).shape == (2, 21, 16)
    gap = build(reg_tokens=4, classifier="gap", fc_norm=True)
    assert gap.cls_token is None and gap.num_prefix_tokens == 4 and gap.norm is None


def test_map_head_pools_the_patch_tokens_with_a_learned_probe():
    model = randomise(build(classifier="map", reg_tokens=1).double().eval())
    assert model.cls_token is None
    tokens = torch.randn(2, 1 + 16, 16, dtype=torch.float64)
    with torch.no_grad():
        pooled = model.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(pooled, reference_map(tokens[:, 1:], model.attn_pool))
    assert {"attn_pool.latent", "attn_pool.q.weight", "attn_pool.kv.weight", "attn_pool.proj.weight",
            "attn_pool.norm.weight", "attn_pool.mlp.fc1.weight"} <= set(model.state_dict())


def test_gap_with_a_class_token_averages_only_the_patches_and_fc_norm_normalises_after():
    model = randomise(build(classifier="gap", class_token=True, fc_norm=True)).eval()
    tokens = torch.randn(2, 17, 16)
    expected = F.layer_norm(tokens[:, 1:].mean(1), (16,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)
    torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), expected)


def test_layer_scale_starts_at_its_value_and_scales_each_branch():
    model = build(layer_scale=1e-5)
    for block in model.blocks:
        assert torch.equal(block.ls1.gamma, torch.full((16,), 1e-5))
        assert torch.equal(block.ls2.gamma, torch.full((16,), 1e-5))
    plain = build()
    assert count_parameters("ViT-Ti/16", **small(layer_scale=1e-5)) == \
        count_parameters("ViT-Ti/16", **small()) + 2 * 2 * 16
    assert "blocks.0.ls1.gamma" in model.state_dict() and "blocks.0.ls1.gamma" not in plain.state_dict()


def test_optional_tokens_and_tables_are_spared_weight_decay():
    from vitlab.training.optim import is_decayed

    def decayed(model):
        return {n for n, p in model.named_parameters() if is_decayed(n, p, model.no_weight_decay())}
    model = build(distill_token=True, reg_tokens=2, posemb="learned_2d", layer_scale=0.1)
    assert not decayed(model) & {"dist_token", "reg_token", "pos_embed_x", "pos_embed_y", "pos_embed_prefix",
                                 "blocks.0.ls1.gamma"}
    assert not decayed(build(posemb="relative", classifier="map")) & {"blocks.0.attn.relative.offsets",
                                                                       "blocks.0.attn.relative.prefix",
                                                                       "attn_pool.latent"}
    assert "blocks.0.attn.qkv.weight" in decayed(model)


# ---- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (dict(width=64.5), "width must be an integer, not 64.5"),
    (dict(depth="2"), "depth must be an integer"),
    (dict(image_size=16.0), "image_size must be an integer"),
    (dict(reg_tokens=-1), "reg_tokens must be >= 0"),
    (dict(posemb="2d"), "posemb must be one of"),
    (dict(attention="window"), "attention must be one of"),
    (dict(classifier="token", class_token=False), "classifier 'token' needs class_token"),
    (dict(classifier="gap", distill_token=True), "distill_token needs classifier 'token'"),
    (dict(posemb="sincos_2d", width=18, num_heads=2), "divisible by 4"),
    (dict(attention="axial", patch_dropout=0.5), "patch_dropout cannot be combined with attention 'axial'"),
    (dict(posemb="relative", attention="axial"), "cannot be combined with attention 'axial'"),
    (dict(layer_scale=0.0), "layer_scale must be a positive number"),
    (dict(layer_scale="1e-5"), "layer_scale must be a number"),
    (dict(distill_token="yes"), "distill_token must be true or false"),
])
def test_impossible_settings_are_refused_with_their_reason(overrides, message):
    with pytest.raises(ValueError, match=message):
        model_config("ViT-Ti/16", **small(**overrides))


def test_pool_is_another_name_for_classifier():
    assert model_config("ViT-Ti/16", pool="map").classifier == "map"
    with pytest.raises(ValueError, match="disagree"):
        model_config("ViT-Ti/16", pool="map", classifier="gap")


@pytest.mark.parametrize("overrides", [
    dict(attention="axial"), dict(attention="axial", classifier="gap"), dict(posemb="relative"),
    dict(classifier="map", reg_tokens=2), dict(distill_token=True, representation_size=8),
    dict(posemb="relative", image_size=(16, 24), classifier="gap"),
])
def test_flops_of_the_variants_match_the_flop_counter(overrides):
    model = build(**overrides).eval()
    h, w = model.config.image_hw
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.forward_head(model.forward_features(torch.randn(1, 3, h, w), return_attention=True)[0])
    assert count_flops(model.config) == counter.get_total_flops()


def test_axial_vit_is_registered_with_its_flops():
    from vitlab.commands.models import model_rows
    rows = {r["name"]: r for r in model_rows("ViT-B/")}
    assert rows["AxialViT-B/16"]["gflops_224"] > rows["ViT-B/16"]["gflops_224"]  # the paper: more compute
    assert rows["AxialViT-B/16"]["params"] > rows["ViT-B/16"]["params"]
    assert rows["AxialViT-B/16"]["gflops_224"] * 1e9 == count_flops(model_config("ViT-B/16", attention="axial"))


def test_vitlab_models_lists_the_flops_of_any_setting(capsys):
    import json
    from vitlab.cli import main
    assert main(["models", "--filter", "ViT-Ti/16", "--set", "posemb=relative", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert "AxialViT-B/16" not in rows and "BiT-R50x1" not in rows  # names that refuse the setting left out
    assert rows["ViT-Ti/16"]["gflops_224"] * 1e9 == count_flops(model_config("ViT-Ti/16", posemb="relative"))
    assert main(["models", "--set", "width=64.5"]) == 2
    assert capsys.readouterr().err.strip().endswith("width must be an integer, not 64.5")


def test_a_subset_of_patches_is_refused_where_the_grid_is_needed():
    keep = torch.arange(8).expand(2, -1)
    assert build().forward_features(torch.randn(2, 3, 16, 16), keep=keep).shape == (2, 1 + 8, 16)
    for overrides in (dict(posemb="relative"), dict(attention="axial")):
        with pytest.raises(ValueError, match="needs every patch of the grid"):
            build(**overrides).forward_features(torch.randn(2, 3, 16, 16), keep=keep)


@pytest.mark.parametrize("overrides", [dict(posemb="relative", classifier="gap"), dict(attention="axial", reg_tokens=1),
                                       dict(posemb="learned_2d", classifier="map", layer_scale=0.5)])
def test_training_gradients_reach_every_new_table_and_match_with_checkpointing(overrides):
    # (with a [class] token readout, the last layer's offsets get no gradient: its query sees only r_prefix)
    model = randomise(build(**overrides)).train()
    x = torch.randn(2, 3, 16, 16)
    model(x).square().sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in plain.values())
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n])


def test_rollout_of_a_model_with_registers_but_no_class_token_reads_the_patch_rows():
    from vitlab.inspection import attention_rollout, attention_weights
    from vitlab.inspection.rollout import rollout_matrix
    model = randomise(build(classifier="gap", reg_tokens=2)).eval()
    _, attentions = attention_weights(model, torch.randn(2, 3, 16, 16))
    maps = attention_rollout(attentions, model.num_prefix_tokens, (4, 4), model.config.has_class_token)
    expected = rollout_matrix(attentions)[:, 2:, 2:].mean(dim=1)  # patch queries, patch keys
    np.testing.assert_allclose(maps.reshape(2, 16), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("overrides", [dict(posemb="relative"), dict(attention="axial", posemb="sincos_2d")])
def test_inspection_draws_every_figure_a_variant_has(overrides, tmp_path):
    from vitlab.inspection import inspect_model
    model = build(**overrides).eval()
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    written = inspect_model(model, tmp_path, images, ["a", "b"], progress=False)
    assert {"rollout", "attention_heads", "attention_distance"} <= set(written)
    assert ("posemb_similarity" in written) == (model.config.posemb != "relative")  # relative adds no table


@pytest.mark.parametrize("overrides", [dict(posemb="sincos_2d", attention="axial", reg_tokens=1, layer_scale=0.1,
                                            classifier="map"),
                                       dict(posemb="relative", distill_token=True, classifier="token")])
def test_a_variant_trains_and_reloads_through_vitlab_train(overrides, tmp_path):
    import training_support as ts
    from vitlab.training import from_dict, train
    from vitlab.training.config import validate
    model = {"overrides": dict(patch_size=4, width=32, depth=1, mlp_dim=64, num_heads=2, **overrides)}
    cfg = validate(from_dict(ts.tiny_config(tmp_path / "run", model=model,
                                            train={"steps": 4, "checkpoint_every": 2, "ema_decay": 0.9})))
    result = train(cfg)
    assert result.steps == 4 and all(math.isfinite(loss) for loss in result.losses)
    loaded = vitlab.load_pretrained(tmp_path / "run")
    assert all(getattr(loaded.config, k) == v for k, v in overrides.items())


def block_keys(n, layer_scale=False):
    keys = {f"blocks.{n}.{part}.{p}" for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
            for p in ("weight", "bias")}
    return keys | ({f"blocks.{n}.ls1.gamma", f"blocks.{n}.ls2.gamma"} if layer_scale else set())


@pytest.mark.parametrize("layout,overrides,extra", [
    # timm deit.py VisionTransformerDistilled: cls, dist, pos_embed over both and the patches, two heads
    ("deit_*_distilled", dict(distill_token=True),
     {"cls_token": (1, 1, 16), "dist_token": (1, 1, 16), "pos_embed": (1, 18, 16), "norm.weight": (16,),
      "norm.bias": (16,), "head_dist.weight": (3, 16), "head_dist.bias": (3,)}),
    # timm vit_*_reg4_gap_256: no class token, 4 registers, no_embed_class, LayerScale, fc_norm instead of norm
    ("vit_*_reg4_gap_256", dict(classifier="gap", reg_tokens=4, fc_norm=True, layer_scale=1e-5),
     {"reg_token": (1, 4, 16), "pos_embed": (1, 16, 16), "fc_norm.weight": (16,), "fc_norm.bias": (16,)}),
    # timm global_pool='map' (SigLIP): AttentionPoolLatent as attn_pool, final norm before it
    ("vit_*_siglip (map)", dict(classifier="map"),
     {"pos_embed": (1, 16, 16), "norm.weight": (16,), "norm.bias": (16,), "attn_pool.latent": (1, 1, 16),
      "attn_pool.q.weight": (16, 16), "attn_pool.q.bias": (16,), "attn_pool.kv.weight": (32, 16),
      "attn_pool.kv.bias": (32,), "attn_pool.proj.weight": (16, 16), "attn_pool.proj.bias": (16,),
      "attn_pool.norm.weight": (16,), "attn_pool.norm.bias": (16,), "attn_pool.mlp.fc1.weight": (32, 16),
      "attn_pool.mlp.fc1.bias": (32,), "attn_pool.mlp.fc2.weight": (16, 32), "attn_pool.mlp.fc2.bias": (16,)}),
])
def test_state_dict_names_and_shapes_follow_timm_layouts(layout, overrides, extra):
    """The parameter names and shapes timm's models of these families have (read from timm's model code), so a
    timm checkpoint of each loads by name."""
    model = build(**overrides)
    common = {"patch_embed.proj.weight", "patch_embed.proj.bias", "head.weight", "head.bias"}
    scaled = "layer_scale" in overrides
    expected = common | set(extra) | block_keys(0, scaled) | block_keys(1, scaled)
    state = model.state_dict()
    assert set(state) == expected, layout
    assert all(tuple(state[k].shape) == shape for k, shape in extra.items()), layout
