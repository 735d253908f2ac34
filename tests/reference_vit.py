"""An independent float64 numpy ViT forward pass over *official-layout* parameters, for parity tests.

Written from the official code's definitions (vit_jax models_vit.py / models_resnet.py, flax's layers), not
from vitlab's: HWIO convolutions, attention kernels (D, heads, head_dim), SAME padding, weight
standardisation, GroupNorm(32), LayerNorm eps 1e-6. `flavour` switches the few places where timm computes
differently (exact GELU, weight standardisation sqrt(var + 1e-8), GroupNorm eps 1e-5), and `cls_posemb=False`
is big_vision's order (position embeddings added before the [class] token is prepended).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

FLAVOURS = {
    "official": dict(gelu="tanh", ws=lambda w: (w - w.mean((0, 1, 2))) / (w.std((0, 1, 2)) + 1e-5), gn_eps=1e-6),
    "timm": dict(gelu="exact", ws=lambda w: (w - w.mean((0, 1, 2))) / np.sqrt(w.var((0, 1, 2)) + 1e-8), gn_eps=1e-5),
}


def gelu(x, kind):
    if kind == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def pad_same(x, k, stride, value=0.0):  # NHWC, TensorFlow's rule: the odd pixel goes after
    pads = [(0, 0)]
    for size in x.shape[1:3]:
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)], constant_values=value)


def windows(x, k, stride):  # (N, oh, ow, C, k, k)
    return np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]


def conv(x, kernel, stride, same=True):
    k = kernel.shape[0]
    if same:
        x = pad_same(x, k, stride)
    return np.tensordot(windows(x, k, stride), kernel, axes=([3, 4, 5], [2, 0, 1]))  # (N, oh, ow, O)


def max_pool_same(x):
    return windows(pad_same(x, 3, 2, value=-np.inf), 3, 2).max(axis=(-1, -2))


def group_norm(x, scale, bias, eps, groups=32):
    n, h, w, c = x.shape
    g = x.reshape(n, h, w, groups, c // groups)
    mean = g.mean((1, 2, 4), keepdims=True)
    var = g.var((1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(n, h, w, c) * scale.reshape(-1) + bias.reshape(-1)


def resnet(x, p, fl):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    gn = lambda v, name: group_norm(v, p[name + "/scale"], p[name + "/bias"], fl["gn_eps"])  # noqa: E731
    std_conv = lambda v, name, stride=1: conv(v, fl["ws"](p[name + "/kernel"]), stride)  # noqa: E731
    x = max_pool_same(relu(gn(std_conv(x, "conv_root", 2), "gn_root")))
    s = 1
    while f"block{s}/unit1/conv1/kernel" in p:
        u = 1
        while f"block{s}/unit{u}/conv1/kernel" in p:
            b = f"block{s}/unit{u}/"
            stride = 2 if (s > 1 and u == 1) else 1
            residual = x
            if b + "conv_proj/kernel" in p:
                residual = gn(std_conv(x, b + "conv_proj", stride), b + "gn_proj")
            y = relu(gn(std_conv(x, b + "conv1"), b + "gn1"))
            y = relu(gn(std_conv(y, b + "conv2", stride), b + "gn2"))
            y = gn(std_conv(y, b + "conv3"), b + "gn3")
            x = relu(residual + y)
            u += 1
        s += 1
    return x


def attention(x, p, prefix, queries_from=None):
    """Flax MultiHeadDotProductAttention; `queries_from` (default `x`) gives the queries (MAP's probe)."""
    q_in = x if queries_from is None else queries_from
    q, k, v = (np.einsum("btd,dhk->bthk", inp, p[f"{prefix}{n}/kernel"]) + p[f"{prefix}{n}/bias"]
               for inp, n in ((q_in, "query"), (x, "key"), (x, "value")))
    logits = np.einsum("bqhk,bthk->bhqt", q, k) / math.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqt,bthk->bqhk", weights, v)
    return np.einsum("bqhk,hkd->bqd", out, p[prefix + "out/kernel"]) + p[prefix + "out/bias"]


def posemb_sincos_2d(h, w, width, temperature=10_000.0):
    """big_vision's fixed table (MoCo v3): frequencies temperature^(-k / (D/4 - 1)), [sin x, cos x, sin y, cos y]."""
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1))
    y, x = np.outer(y.reshape(-1), omega), np.outer(x.reshape(-1), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None]


def map_head(x, p, gelu_kind, prefix="MAPHead_0/"):
    """big_vision's MAPHead: a learned probe attends over the tokens; then x + MLP(LN(x)); the probe's output."""
    probe = np.broadcast_to(p[prefix + "probe"], (x.shape[0], 1, x.shape[2]))
    y = attention(x, p, prefix + "MultiHeadDotProductAttention_0/", queries_from=probe)
    z = layer_norm(y, p[prefix + "LayerNorm_0/scale"], p[prefix + "LayerNorm_0/bias"])
    mlp = prefix + "MlpBlock_0/"
    z = gelu(z @ p[mlp + "Dense_0/kernel"] + p[mlp + "Dense_0/bias"], gelu_kind)
    return (y + z @ p[mlp + "Dense_1/kernel"] + p[mlp + "Dense_1/bias"])[:, 0]


def forward(params: dict, images_nchw: np.ndarray, flavour: str = "official", cls_posemb: bool = True) -> np.ndarray:
    """Logits of the official ViT computation, in float64. `params` uses the official npz names."""
    fl = FLAVOURS[flavour]
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    x = np.asarray(images_nchw, dtype=np.float64).transpose(0, 2, 3, 1)  # NHWC, as in JAX
    if "conv_root/kernel" in p:
        x = resnet(x, p, fl)
    patch = p["embedding/kernel"].shape[0]
    x = conv(x, p["embedding/kernel"], patch, same=False) + p["embedding/bias"]
    n, h, w, d = x.shape
    x = x.reshape(n, h * w, d)
    posemb = p.get("Transformer/posembed_input/pos_embedding")
    if posemb is None:  # big_vision's posemb="sincos2d": computed, never stored
        posemb, cls_posemb = posemb_sincos_2d(h, w, d), False
    if "cls" in p:
        cls = np.broadcast_to(p["cls"], (n, 1, d))
        x = np.concatenate([cls, x], 1) + posemb if cls_posemb else np.concatenate([cls, x + posemb], 1)
    else:
        x = x + posemb
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in p:
        b = f"Transformer/encoderblock_{i}/"
        y = layer_norm(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
        x = x + attention(y, p, b + "MultiHeadDotProductAttention_1/")
        y = layer_norm(x, p[b + "LayerNorm_2/scale"], p[b + "LayerNorm_2/bias"])
        y = gelu(y @ p[b + "MlpBlock_3/Dense_0/kernel"] + p[b + "MlpBlock_3/Dense_0/bias"], fl["gelu"])
        x = x + y @ p[b + "MlpBlock_3/Dense_1/kernel"] + p[b + "MlpBlock_3/Dense_1/bias"]
        i += 1
    x = layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    x = x[:, 0] if "cls" in p else (map_head(x, p, fl["gelu"]) if "MAPHead_0/probe" in p else x.mean(1))
    if "pre_logits/kernel" in p:
        x = np.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    return x @ p["head/kernel"] + p["head/bias"]


def random_official_params(seed=0, *, width=32, depth=2, heads=4, mlp_dim=64, patch=8, grid=(4, 4), classes=5,
                           token=True, representation=None, hybrid_layers=None, hybrid_width=64, in_chans=3,
                           legacy_gn_shape=False, map_head=False, posemb="learn") -> dict[str, np.ndarray]:
    """Random float32 parameters with the official names and shapes (documented in vitlab's npz_official).

    A hybrid has `hybrid_layers` units per stage (`()`: the root block alone) and a root of `hybrid_width`
    channels (the official `int(64 * width_factor)`)."""
    rng = np.random.default_rng(seed)
    p = {}

    def dense(name, fan_in, shape):
        p[name + "/kernel"] = rng.normal(0, fan_in**-0.5, shape).astype(np.float32)

    def bias(name, shape, std=0.1):
        p[name + "/bias"] = rng.normal(0, std, shape).astype(np.float32)

    def norm(name, c):
        shape = (1, 1, 1, c) if legacy_gn_shape and name.split("/")[-1].startswith("gn") else (c,)
        p[name + "/scale"] = (1 + rng.normal(0, 0.1, shape)).astype(np.float32)
        p[name + "/bias"] = rng.normal(0, 0.1, shape).astype(np.float32)

    embed_in = in_chans
    if hybrid_layers is not None:
        dense("conv_root", 49 * in_chans, (7, 7, in_chans, hybrid_width))
        norm("gn_root", hybrid_width)
        c = hybrid_width
        for s, units in enumerate(hybrid_layers, start=1):
            mid = hybrid_width * 2 ** (s - 1)
            for u in range(1, units + 1):
                b = f"block{s}/unit{u}/"
                dense(b + "conv1", c, (1, 1, c, mid))
                dense(b + "conv2", 9 * mid, (3, 3, mid, mid))
                dense(b + "conv3", mid, (1, 1, mid, 4 * mid))
                for n, ch in ((1, mid), (2, mid), (3, 4 * mid)):
                    norm(b + f"gn{n}", ch)
                if u == 1:
                    dense(b + "conv_proj", c, (1, 1, c, 4 * mid))
                    norm(b + "gn_proj", 4 * mid)
                c = 4 * mid
        embed_in = c
    hd = width // heads
    dense("embedding", patch * patch * embed_in, (patch, patch, embed_in, width))
    bias("embedding", (width,))
    if token:
        p["cls"] = rng.normal(0, 0.5, (1, 1, width)).astype(np.float32)
    rows = grid[0] * grid[1] + (1 if token else 0)
    if posemb == "learn":  # big_vision's "sincos2d" stores nothing
        p["Transformer/posembed_input/pos_embedding"] = rng.normal(0, 0.5, (1, rows, width)).astype(np.float32)
    for i in range(depth):
        b = f"Transformer/encoderblock_{i}/"
        norm(b + "LayerNorm_0", width)
        norm(b + "LayerNorm_2", width)
        for n in ("query", "key", "value"):
            dense(b + f"MultiHeadDotProductAttention_1/{n}", width, (width, heads, hd))
            bias(b + f"MultiHeadDotProductAttention_1/{n}", (heads, hd))
        dense(b + "MultiHeadDotProductAttention_1/out", width, (heads, hd, width))
        bias(b + "MultiHeadDotProductAttention_1/out", (width,))
        dense(b + "MlpBlock_3/Dense_0", width, (width, mlp_dim))
        bias(b + "MlpBlock_3/Dense_0", (mlp_dim,))
        dense(b + "MlpBlock_3/Dense_1", mlp_dim, (mlp_dim, width))
        bias(b + "MlpBlock_3/Dense_1", (width,))
    norm("Transformer/encoder_norm", width)
    if map_head:
        p["MAPHead_0/probe"] = rng.normal(0, 0.5, (1, 1, width)).astype(np.float32)
        for n in ("query", "key", "value"):
            dense(f"MAPHead_0/MultiHeadDotProductAttention_0/{n}", width, (width, heads, hd))
            bias(f"MAPHead_0/MultiHeadDotProductAttention_0/{n}", (heads, hd))
        dense("MAPHead_0/MultiHeadDotProductAttention_0/out", width, (heads, hd, width))
        bias("MAPHead_0/MultiHeadDotProductAttention_0/out", (width,))
        norm("MAPHead_0/LayerNorm_0", width)
        dense("MAPHead_0/MlpBlock_0/Dense_0", width, (width, mlp_dim))
        bias("MAPHead_0/MlpBlock_0/Dense_0", (mlp_dim,))
        dense("MAPHead_0/MlpBlock_0/Dense_1", mlp_dim, (mlp_dim, width))
        bias("MAPHead_0/MlpBlock_0/Dense_1", (width,))
    features = width
    if representation:
        dense("pre_logits", width, (width, representation))
        bias("pre_logits", (representation,))
        features = representation
    dense("head", features, (features, classes))
    bias("head", (classes,))
    return p
