"""Inspection: the numbers behind the paper's Figures 6, 7 and 14, checked against independent computations."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import tiny

import vitlab
from vitlab.inspection import (attention_distance, attention_rollout, attention_weights, class_attention,
                               embedding_filters, mean_attention_distance, normalise, position_similarity,
                               posemb_similarity, principal_filters, uniform_attention_distance)


def random_attention(layers, batch, heads, tokens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, tokens, generator=g).mul(3).softmax(-1) for _ in range(layers)]


def numpy_rollout(attentions):
    """Abnar & Zuidema's rollout written out in numpy, layer by layer: R_l = norm(mean_h A_l + I) R_{l-1}."""
    a = [x.numpy().astype(np.float64) for x in attentions]
    out = []
    for b in range(a[0].shape[0]):
        joint = np.eye(a[0].shape[-1])
        for layer in a:
            m = layer[b].mean(axis=0) + np.eye(layer.shape[-1])
            m /= m.sum(axis=1, keepdims=True)
            joint = m @ joint
        out.append(joint)
    return np.stack(out)


# ---- rollout ----------------------------------------------------------------------------------------------------
def test_rollout_equals_direct_numpy_computation():
    grid = (3, 4)
    attentions = random_attention(layers=4, batch=2, heads=3, tokens=1 + 12)
    expected = numpy_rollout(attentions)
    maps = attention_rollout(attentions, num_prefix_tokens=1, grid_hw=grid)
    assert maps.shape == (2, 3, 4)
    np.testing.assert_allclose(maps, expected[:, 0, 1:].reshape(2, 3, 4), rtol=1e-6, atol=1e-12)


def test_rollout_of_a_gap_model_is_the_mean_row():
    attentions = random_attention(layers=3, batch=2, heads=2, tokens=9, seed=1)
    expected = numpy_rollout(attentions).mean(axis=1).reshape(2, 3, 3)
    np.testing.assert_allclose(attention_rollout(attentions, 0, (3, 3)), expected, rtol=1e-6, atol=1e-12)


def test_class_attention_is_the_raw_class_row_per_head():
    last = random_attention(layers=1, batch=2, heads=3, tokens=5)[0]
    maps = class_attention(last, 1, (2, 2))
    assert maps.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(maps[1, 2].ravel(), last[1, 2, 0, 1:].numpy(), rtol=1e-6)
    np.testing.assert_allclose(class_attention(last[..., 1:, 1:], 0, (2, 2))[0, 1].ravel(),
                               last[0, 1, 1:, 1:].mean(0).numpy(), rtol=1e-6)


# ---- mean attention distance -------------------------------------------------------------------------------------
def pairwise_mean(gh, gw, stride):
    """Mean distance between all ordered pairs of patch centres, by brute force."""
    cells = list(itertools.product(range(gh), range(gw)))
    total = sum(math.hypot(r1 - r2, c1 - c2) for (r1, c1), (r2, c2) in itertools.product(cells, cells))
    return stride * total / len(cells) ** 2


def test_attention_to_self_only_has_distance_zero():
    eye = torch.eye(1 + 9).expand(2, 4, 10, 10)
    assert np.array_equal(mean_attention_distance([eye, eye], (3, 3), 16, 1), np.zeros((2, 2, 4)))


@pytest.mark.parametrize("grid,prefix", [((3, 3), 1), ((2, 3), 0), ((4, 4), 1)])
def test_uniform_attention_gives_the_mean_pairwise_distance(grid, prefix):
    t = prefix + grid[0] * grid[1]
    uniform = torch.full((1, 2, t, t), 1.0 / t)  # the [class] share is left out and the rest renormalised
    d = mean_attention_distance([uniform], grid, 16, prefix)
    np.testing.assert_allclose(d, pairwise_mean(*grid, 16), rtol=1e-12)
    assert uniform_attention_distance(grid, 16) == pytest.approx(pairwise_mean(*grid, 16), rel=1e-12)


def test_uniform_attention_over_3x3_by_hand():
    # the 81 ordered pairs of a 3x3 grid: 9 at 0, 24 at 1, 16 at sqrt 2, 12 at 2, 16 at sqrt 5, 4 at sqrt 8
    by_hand = (24 + 16 * math.sqrt(2) + 12 * 2 + 16 * math.sqrt(5) + 4 * math.sqrt(8)) / 81
    assert uniform_attention_distance((3, 3), 1.0) == pytest.approx(by_hand, rel=1e-12)


def test_all_attention_on_the_top_left_patch():
    a = torch.zeros(1, 1, 5, 5)
    a[..., 1] = 1.0  # token 1 = patch (0, 0) of a 2x2 grid
    expected = (0 + 10 + 10 + 10 * math.sqrt(2)) / 4  # stride 10: the queries are 0, 10, 10, 14.14 px away
    assert mean_attention_distance([a], (2, 2), 10, 1)[0, 0, 0] == pytest.approx(expected, rel=1e-12)


def test_hybrid_distances_are_in_input_pixels_through_the_resnet_stride():
    torch.manual_seed(0)
    hybrid = vitlab.create_model("R50+ViT-B/16", **tiny(image_size=64, resnet_layers=(1, 1, 1))).eval()
    assert hybrid.config.patch_size == 1 and hybrid.config.stride == 16 and hybrid.config.grid_size == (4, 4)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    distances, count = attention_distance(hybrid, [x[:2], x[2:]], progress=False)
    _, attentions = attention_weights(hybrid, x)
    in_cells = mean_attention_distance(attentions, (4, 4), 1, 1).mean(axis=0)
    assert count == 3 and distances.shape == (2, 2)
    np.testing.assert_allclose(distances, 16 * in_cells, rtol=1e-6)  # batch size changes float32 rounding
    assert 0 < distances.max() < pairwise_mean(4, 4, 16) * 2


def test_streamed_distance_is_the_mean_over_all_images():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8)).eval()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    streamed, count = attention_distance(model, iter([x[:2], x[2:4], x[4:]]), progress=False)
    _, attentions = attention_weights(model, x)
    assert count == 5
    np.testing.assert_allclose(streamed, mean_attention_distance(attentions, (4, 4), 8, 1).mean(0), rtol=1e-9)


# ---- position embeddings and filters -----------------------------------------------------------------------------
def test_position_similarity_is_cosine_similarity_on_any_grid():
    e = torch.randn(6, 10, dtype=torch.float64)
    sim = position_similarity(e, (2, 3))
    n = e.numpy() / np.linalg.norm(e.numpy(), axis=1, keepdims=True)
    np.testing.assert_allclose(sim.reshape(6, 6), n @ n.T, rtol=1e-12)
    assert sim[1, 2, 1, 2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3x3 patch grid"):
        position_similarity(e, (3, 3))


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_posemb_similarity_leaves_out_the_class_token(classifier):
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8, image_size=(16, 24), classifier=classifier))
    sim = posemb_similarity(model)
    assert sim.shape == (2, 3, 2, 3)
    patches = model.pos_embed.detach()[0, model.num_prefix_tokens:]
    np.testing.assert_allclose(sim.reshape(6, 6), position_similarity(patches, (2, 3)).reshape(6, 6))


@pytest.mark.parametrize("filters,count", [(80, 28), (30, 28), (12, 11)])  # more filters than pixels, and fewer
def test_filter_components_are_the_principal_components(filters, count):
    g = torch.Generator().manual_seed(filters)
    w = torch.randn(filters, 3, 4, 4, dtype=torch.float64, generator=g) * torch.linspace(0.1, 3, 48).reshape(1, 3, 4, 4)
    comps, ratio = principal_filters(w, 28)
    flat = w.reshape(filters, -1).numpy()
    u, s, vt = np.linalg.svd(flat - flat.mean(0), full_matrices=False)  # PCA by SVD, as a textbook does
    assert comps.shape == (count, 3, 4, 4)
    np.testing.assert_allclose(np.abs(np.sum(comps.reshape(count, -1) * vt[:count], axis=1)), 1.0, atol=1e-8)
    np.testing.assert_allclose(ratio, s[:count] ** 2 / np.sum(s**2), rtol=1e-8)


def test_filters_of_grey_and_hybrid_models():
    grey = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, image_size=28, in_chans=1))
    comps, _ = embedding_filters(grey)
    assert comps.shape == (16, 1, 4, 4)  # only 16 = 1 x 4 x 4 dimensions to have components in
    hybrid = vitlab.create_model("R50+ViT-B/16", **tiny(image_size=32, resnet_layers=(1,)))
    with pytest.raises(ValueError, match="hybrid"):
        embedding_filters(hybrid)


# ---- the model is left as it was ---------------------------------------------------------------------------------
def test_inspection_leaves_the_model_and_its_outputs_unchanged():
    model = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=8))
    model.train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model.eval()
    with torch.no_grad():
        before = model(x)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits, attentions = attention_weights(model, x)
    attention_distance(model, [x], progress=False)
    assert model.training  # mode restored
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)  # the fused path is untouched
    torch.testing.assert_close(logits, before, rtol=1e-5, atol=1e-5)  # the explicit path agrees with it
    assert len(attentions) == 2 and attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(attentions[1].sum(-1), torch.ones(2, 2, 17))


def test_attention_weights_refuses_a_resnet():
    bit = vitlab.create_model("BiT-R50x1", num_classes=3)
    with pytest.raises(ValueError, match="Vision Transformer"):
        attention_weights(bit, torch.zeros(1, 3, 32, 32))


def test_normalisation_follows_the_checkpoint():
    model = vitlab.create_model("ViT-Ti/16", **tiny())
    images = torch.tensor([0, 255], dtype=torch.uint8).reshape(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert normalise(images, model).flatten().tolist() == [-1, 1, -1, 1, -1, 1]
    model.preprocessing = {"normalisation": "mean_std", "mean": [0.5, 0.5, 0.0], "std": [0.5, 0.25, 1.0]}
    assert normalise(images, model)[0, :, 0, 1].tolist() == [1.0, 2.0, 1.0]
    model.preprocessing = {"normalisation": "zca"}
    with pytest.raises(ValueError, match="zca"):
        normalise(images, model)


def test_vitlab_inspection_loads_on_first_use_and_leaves_the_stdlib_alone():
    import inspect as stdlib_inspect

    import vitlab
    import vitlab.inspection

    assert vitlab.__getattr__("inspection") is vitlab.inspection
    with pytest.raises(AttributeError):  # one name for the package: the `vitlab.inspect` alias is gone
        vitlab.__getattr__("inspect")
    assert hasattr(stdlib_inspect, "signature") and stdlib_inspect.__name__ == "inspect"
