"""Training objectives through the Trainer: the interface, masked patch prediction, MAE."""

from __future__ import annotations

import json

import pytest
import torch

import training_support as ts
from vitlab.training import Trainer, from_dict, train
from vitlab.training.config import ConfigError, validate


def config(tmp_path, **sections):
    return validate(from_dict(ts.tiny_config(tmp_path / "run", **sections)))


def test_mpp_run_saves_a_plain_encoder_and_its_objective_apart(tmp_path):
    import vitlab
    from vitlab.training import checkpointing

    cfg = config(tmp_path, objective={"name": "mpp"}, train={"steps": 4, "ema_decay": 0.9})
    result = train(cfg)
    assert result.metric == "eval_masked_accuracy" and 0.0 <= result.last_metric <= 1.0
    step = tmp_path / "run/checkpoints/step-00000004"
    encoder = vitlab.load_pretrained(step)  # model.safetensors is a plain ViT, without a head
    assert encoder.config.num_classes == 0
    assert not any(k.startswith(("head.", "mask_embedding")) for k in encoder.state_dict())
    parts = checkpointing.load_objective_weights(step)
    assert set(parts) == {"mask_embedding", "head.weight", "head.bias"} and parts["head.weight"].shape[0] == 8
    assert set(checkpointing.load_objective_weights(step / "ema")) == set(parts)
    assert checkpointing.read_objective_record(step)["name"] == "mpp"
    records = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert "masked_accuracy" in records[0] and "eval_masked_accuracy_ema" in records[-1]


def test_objective_parameters_are_optimised(tmp_path):
    cfg = config(tmp_path, objective={"name": "mpp"}, train={"steps": 2})
    trainer = Trainer(cfg)
    before = trainer.objective.mask_embedding.detach().clone()
    trainer.fit()
    assert not torch.equal(before, trainer.objective.mask_embedding.detach())


def test_classification_checkpoints_have_no_objective_files(tmp_path):
    train(config(tmp_path, train={"steps": 1}))
    assert not list((tmp_path / "run/checkpoints").glob("*/objective.*"))


@pytest.mark.parametrize("sets, message", [
    ({"objective": {"name": "mim"}}, "objective.name = 'mim' is not one of"),
    ({"objective": {"name": "mpp", "mpp": {"corrupt_rate": 0.0}}}, "objective.mpp.corrupt_rate"),
    ({"objective": {"name": "mpp", "mpp": {"replace_with_mask": 0.95}}}, "sum to <= 1"),
    ({"objective": {"name": "mpp", "mpp": {"target": "colour"}}}, "objective.mpp.target"),
    ({"objective": {"name": "mpp"}, "model": {"overrides": {"patch_dropout": 0.5}}}, "patch_dropout"),
    ({"objective": {"name": "mpp", "mpp": {"target": "downsized", "downsized_size": 3}}}, "does not divide"),
    ({"objective": {"name": "mae"}, "model": {"overrides": {"posemb": "relative"}}}, "posemb 'relative'"),
    ({"objective": {"name": "mae", "mae": {"mask_rate": 1.0}}}, "objective.mae.mask_rate"),
    ({"objective": {"name": "mae", "mae": {"decoder_width": 30, "decoder_heads": 4}}}, "not divisible"),
])
def test_bad_objective_settings_are_refused_before_work(tmp_path, sets, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **sets)


# ---- masked patch prediction: corruption ------------------------------------------------------------------
def test_corruption_statistics_match_the_settings():
    from vitlab.training.objectives.mpp import draw_corruption
    from vitlab.training.objectives.settings import MPPConfig

    g = torch.Generator().manual_seed(0)
    c = draw_corruption(2048, 64, MPPConfig(), generator=g)  # 131,072 patches
    corrupted = c.corrupted.sum().item()
    assert abs(corrupted / c.corrupted.numel() - 0.5) < 0.01
    assert abs(c.mask.sum().item() / corrupted - 0.8) < 0.01
    assert abs(c.random.sum().item() / corrupted - 0.1) < 0.01
    kept = (c.corrupted & ~c.mask & ~c.random).sum().item()
    assert abs(kept / corrupted - 0.1) < 0.01
    assert not (c.mask & c.random).any() and not ((c.mask | c.random) & ~c.corrupted).any()
    rare = draw_corruption(2048, 64, MPPConfig(corrupt_rate=0.15, replace_with_mask=0.6, replace_with_random=0.3),
                           generator=g)
    assert abs(rare.corrupted.float().mean().item() - 0.15) < 0.01
    assert abs(rare.random.sum().item() / rare.corrupted.sum().item() - 0.3) < 0.01


def test_random_replacement_takes_another_patch_never_itself():
    from vitlab.training.objectives.mpp import corrupt, draw_corruption
    from vitlab.training.objectives.settings import MPPConfig

    B, N, D = 8, 4, 3
    g = torch.Generator().manual_seed(1)
    # every patch replaced by a random one; each embedding names its own flat index, so a leak is visible
    settings = MPPConfig(corrupt_rate=1.0, replace_with_mask=0.0, replace_with_random=1.0)
    embeddings = torch.arange(B * N, dtype=torch.float32).view(B, N, 1).expand(B, N, D).contiguous()
    sources = []
    for _ in range(300):
        c = draw_corruption(B, N, settings, generator=g)
        out = corrupt(embeddings, c, torch.full((D,), -1.0))
        assert c.random.all()
        assert (out[..., 0] != embeddings[..., 0]).all()  # never the patch itself
        assert torch.equal(out[..., 0].long(), c.source)
        sources.append(c.source.flatten())
    # the other patches come from the whole batch, other images included, all of them
    assert torch.unique(torch.cat(sources)).numel() == B * N
    assert (torch.stack(sources) // N != torch.arange(B * N) // N).any()
    # 80/10/10: masked patches carry the [mask] embedding, kept ones their own
    c = draw_corruption(B, N, MPPConfig(), generator=g)
    out = corrupt(embeddings, c, torch.full((D,), -1.0))
    assert (out[c.mask] == -1).all()
    untouched = ~c.mask & ~c.random
    assert torch.equal(out[untouched], embeddings[untouched])


# ---- masked patch prediction: targets --------------------------------------------------------------------
def crafted_rgb_batch():
    """One 8x8 RGB image of four 4x4 patches with known colours, as the loader normalises it ([-1, 1])."""
    pixels = torch.zeros(1, 3, 8, 8)
    pixels[0, :, :4, :4] = torch.tensor([255.0, 0.0, 0.0]).view(3, 1, 1)  # red
    pixels[0, :, :4, 4:] = torch.tensor([31.0, 32.0, 100.0]).view(3, 1, 1)  # (0, 1, 3)
    pixels[0, :, 4:, :4] = 200.0  # mid grey in two halves: mean of 100 and 200 = 150 -> level 4
    pixels[0, :, 4:6, :4] = 100.0
    pixels[0, 0, 4:, 4:] = torch.arange(16, dtype=torch.float32).view(4, 4) * 16  # mean 120 -> level 3
    return pixels, pixels / 127.5 - 1.0


def mpp_objective(target="mean_color", in_chans=3, patch=4, **settings):
    from vitlab.models import create_model
    from vitlab.training.objectives.mpp import MaskedPatchPrediction
    from vitlab.training.objectives.settings import MPPConfig

    model = create_model("ViT-Ti/16", patch_size=patch, width=32, depth=1, mlp_dim=32, num_heads=2,
                         image_size=8, in_chans=in_chans, num_classes=0)
    objective = MaskedPatchPrediction(MPPConfig(target=target, **settings), model.config,
                                      {"normalisation": "minus_one_one"})
    return model, objective


def test_mean_colour_targets_equal_a_hand_computation():
    _, images = crafted_rgb_batch()
    _, objective = mpp_objective()
    expected = [7 * 64 + 0 * 8 + 0, 0 * 64 + 1 * 8 + 3, 4 * 64 + 4 * 8 + 4, 3 * 64 + 0 * 8 + 0]
    assert objective.targets(images).flatten().tolist() == expected
    assert objective.head.out_features == 512
    grey = images[:, :1]
    _, one_channel = mpp_objective(in_chans=1)
    assert one_channel.targets(grey).flatten().tolist() == [7, 0, 4, 3] and one_channel.head.out_features == 8
    mean_std = objective.__class__(objective.settings, mpp_objective()[0].config,
                                   {"normalisation": "mean_std", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]})
    pixels, _ = crafted_rgb_batch()
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.4]).view(3, 1, 1)
    normalised = (pixels / 255 - mean) / std
    assert mean_std.targets(normalised).flatten().tolist() == expected


def test_downsized_and_pixel_targets_equal_a_hand_computation():
    pixels, images = crafted_rgb_batch()
    _, objective = mpp_objective(target="downsized", downsized_size=2)  # a 4x4 patch -> 2x2 cells of 2x2 px
    targets = objective.targets(images)
    assert targets.shape == (1, 4, 4) and objective.head.out_features == 4 * 512
    assert targets[0, 0].tolist() == [7 * 64] * 4 and targets[0, 1].tolist() == [0 * 64 + 1 * 8 + 3] * 4
    assert targets[0, 2].tolist() == [3 * 64 + 3 * 8 + 3] * 2 + [6 * 64 + 6 * 8 + 6] * 2  # 100 above, 200 below
    # patch 3's red channel: rows of 0,16,32,48 / 64..112 / ...: cell means 40, 72, 168, 200 -> 1, 2, 5, 6
    assert [t // 64 for t in targets[0, 3].tolist()] == [1, 2, 5, 6]
    _, four = mpp_objective(target="downsized")  # the paper's 4x4 cells: a 4-px patch's own pixels
    assert four.targets(images).shape == (1, 4, 16) and four.head.out_features == 16 * 512
    assert four.targets(images)[0, 3].tolist() == [(16 * i * 8 // 256) * 64 for i in range(16)]
    _, l2 = mpp_objective(target="pixels")
    flat = l2.targets(images)
    assert flat.shape == (1, 4, 48) and l2.head.out_features == 48 and l2.metric == "eval_loss"
    # patch 1 (top right), pixel (0, 0), channels last: the model's input values
    assert torch.equal(flat[0, 1, :3], images[0, :, 0, 4])
    assert torch.equal(flat[0, 3].view(4, 4, 3)[..., 0], images[0, 0, 4:, 4:])


def perturbed(images, patch, which, amount=0.5):
    """`images` with the pixels of the patches where `which` (B, N) is True shifted by `amount`."""
    from vitlab.training.objectives.patches import patchify, unpatchify

    patches = patchify(images, patch)
    patches[which] += amount
    grid = (images.shape[-2] // patch, images.shape[-1] // patch)
    return unpatchify(patches, patch, grid, images.shape[1])


@pytest.mark.parametrize("target", ["mean_color", "downsized", "pixels"])
def test_mpp_loss_reads_only_the_corrupted_patches(target):
    model, objective = mpp_objective(target=target, downsized_size=2)
    _, images = crafted_rgb_batch()
    images = images.repeat(6, 1, 1, 1)
    torch.manual_seed(3)
    outputs, c = objective.predict(model, images)
    outputs = outputs + torch.randn_like(outputs)  # a head that is not yet all zeros
    assert c.corrupted.any() and (~c.corrupted).any()
    loss = objective.loss(outputs, c.corrupted, images).loss
    assert objective.loss(outputs, c.corrupted, perturbed(images, 4, ~c.corrupted)).loss == loss
    assert objective.loss(outputs, c.corrupted, perturbed(images, 4, c.corrupted)).loss != loss


# ---- masked patch prediction through the engine ----------------------------------------------------------
def test_mpp_run_resumes_exactly(tmp_path):
    import shutil

    cfg = config(tmp_path, objective={"name": "mpp", "mpp": {"target": "downsized", "downsized_size": 2}},
                 model={"overrides": dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2, dropout=0.1,
                                          drop_path=0.1)},
                 train={"steps": 12, "ema_decay": 0.9, "accumulation_steps": 2, "eval_every": 6})
    full = train(cfg)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints/step-00000012")
    resumed = train(cfg)
    assert resumed.resumed_from == 8
    assert resumed.losses == full.losses[8:]  # corruption RNG, [mask] embedding, head, optimiser, EMA restored
    assert resumed.last_metric == full.last_metric and resumed.last_metric_ema == full.last_metric_ema


def test_finetune_from_an_mpp_checkpoint_starts_from_its_encoder(tmp_path):
    from safetensors.torch import load_file

    train(config(tmp_path / "pre", objective={"name": "mpp"}, train={"steps": 3}))
    step = tmp_path / "pre/run/checkpoints/step-00000003"
    encoder = load_file(str(step / "model.safetensors"))
    cfg = config(tmp_path, model={"name": "ViT-Ti/16", "init": str(step), "overrides": {}}, train={"steps": 2})
    trainer = Trainer(cfg)
    weights = trainer.model.state_dict()
    assert set(encoder) == set(weights) - {"head.weight", "head.bias"}
    assert all(torch.equal(encoder[k], weights[k]) for k in encoder)
    assert trainer.model.head.out_features == 4 and trainer.model.head.weight.abs().sum() == 0
    assert trainer.objective.name == "classification"
    result = trainer.fit()
    assert result.metric == "eval_accuracy" and result.last_metric is not None


def test_inspect_draws_what_a_self_supervised_checkpoint_predicts(tmp_path, capsys):
    from PIL import Image

    from vitlab.cli import main as cli_main

    train(config(tmp_path, objective={"name": "mpp"}, train={"steps": 2}))
    out = tmp_path / "inspect"
    data = f"folder:{ts.image_folder(ts.DATA_ROOT)}"
    assert cli_main(["inspect", "--checkpoint", str(tmp_path / "run"), "--data", data, "--show", "3",
                     "--num-images", "3", "--figures", "posemb", "--out", str(out), "--no-progress"]) == 0
    figure = Image.open(out / "objective_predictions.png")
    assert figure.size[0] > 4 * 150 and figure.size[1] > 3 * 150  # 4 columns, 3 rows
    # a classification checkpoint has nothing of the kind
    train(config(tmp_path / "plain", train={"steps": 1}))
    assert cli_main(["inspect", "--checkpoint", str(tmp_path / "plain/run"), "--data", data, "--show", "2",
                     "--num-images", "2", "--figures", "posemb", "--out", str(tmp_path / "plain/inspect"),
                     "--no-progress"]) == 0
    assert not (tmp_path / "plain/inspect/objective_predictions.png").exists()


# ---- MAE --------------------------------------------------------------------------------------------------
def mae_objective(classifier="token", **settings):
    from vitlab.models import create_model
    from vitlab.training.objectives.mae import MaskedAutoencoder
    from vitlab.training.objectives.settings import MAEConfig

    model = create_model("ViT-Ti/16", patch_size=4, width=32, depth=1, mlp_dim=32, num_heads=2, image_size=16,
                         in_chans=3, num_classes=0, classifier=classifier)
    settings = {"decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, "decoder_mlp_dim": 32, **settings}
    return model, MaskedAutoencoder(MAEConfig(**settings), model.config, {"normalisation": "minus_one_one"})


def test_mae_index_bookkeeping_restores_the_original_order():
    from vitlab.models.vit import keep_patches, random_patch_subset
    from vitlab.training.objectives.mae import hidden_mask, restore_order

    B, N, D = 5, 16, 3
    tokens = torch.arange(B * N * D, dtype=torch.float32).view(B, N, D)
    with_prefix = torch.cat([torch.full((B, 1, D), -7.0), tokens], dim=1)
    kept = random_patch_subset(B, N, 4, generator=torch.Generator().manual_seed(0))
    visible = keep_patches(with_prefix, kept, num_prefix_tokens=1)
    assert visible.shape == (B, 5, D) and (visible[:, 0] == -7).all()  # the [class] token stays first
    restored = restore_order(visible[:, 1:], kept, N, fill=torch.full((D,), -1.0))
    hidden = hidden_mask(kept, N)
    assert hidden.sum(1).tolist() == [12] * B
    assert torch.equal(restored[~hidden], tokens[~hidden])  # every visible token back in its own place
    assert (restored[hidden] == -1).all()
    for b in range(B):
        assert sorted(kept[b].tolist()) == torch.nonzero(~hidden[b]).flatten().tolist()


def test_mae_encoder_sees_only_the_visible_patches():
    model, objective = mae_objective()
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.update(tokens=o[0].shape[1]))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    predicted, hidden = objective.reconstruct(model, images)
    assert seen["tokens"] == 1 + 4  # the [class] token and a quarter of the 16 patches
    assert predicted.shape == (2, 16, 48) and hidden.sum().item() == 2 * 12


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_mae_loss_reads_only_the_hidden_patches(norm_pix_loss):
    model, objective = mae_objective(classifier="gap", norm_pix_loss=norm_pix_loss)
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    predicted, hidden = objective.reconstruct(model, images)
    loss = objective.loss(predicted, hidden, images).loss
    assert objective.loss(predicted, hidden, perturbed(images, 4, ~hidden)).loss == loss
    assert objective.loss(predicted, hidden, perturbed(images, 4, hidden, 0.3) * 0.5).loss != loss


def test_mae_targets_are_each_patch_normalised():
    _, objective = mae_objective()
    images = torch.rand(2, 3, 16, 16)
    targets = objective.targets(images)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 16), atol=1e-5)
    assert torch.allclose(targets.std(-1, unbiased=False), torch.ones(2, 16), atol=1e-3)
    from vitlab.training.objectives.patches import patchify

    patch = patchify(images, 4)[1, 5]
    assert torch.allclose(targets[1, 5], (patch - patch.mean()) / (patch.var(unbiased=False) + 1e-6).sqrt())


def test_mae_run_trains_evaluates_and_is_inspected(tmp_path):
    import vitlab
    from vitlab.cli import main as cli_main
    from vitlab.training import checkpointing

    cfg = config(tmp_path, objective={"name": "mae", "mae": {"decoder_width": 16, "decoder_depth": 1,
                                                             "decoder_heads": 2, "decoder_mlp_dim": 32}},
                 train={"steps": 6, "ema_decay": 0.9, "precision": "bf16"})
    result = train(cfg)
    assert result.metric == "eval_loss" and result.last_metric > 0 and result.losses[-1] < result.losses[0]
    step = tmp_path / "run/checkpoints/step-00000006"
    assert vitlab.load_pretrained(step).config.num_classes == 0
    assert "decoder_blocks.0.attn.qkv.weight" in checkpointing.load_objective_weights(step)
    assert "decoder_pos" not in checkpointing.load_objective_weights(step)  # fixed: rebuilt, not saved
    data = f"folder:{ts.image_folder(ts.DATA_ROOT)}"
    assert cli_main(["inspect", "--checkpoint", str(tmp_path / "run"), "--data", data, "--show", "2",
                     "--num-images", "2", "--figures", "posemb", "--out", str(tmp_path / "inspect"),
                     "--no-progress"]) == 0
    assert (tmp_path / "inspect/objective_predictions.png").is_file()


# ---- across processes --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_objectives_train_and_resume_under_torchrun_ddp_and_fsdp(tmp_path):
    import shutil

    from test_training_processes import assert_backend_stopped, losses_in, run_cli

    mae = {"name": "mae", "mae": {"decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2,
                                  "decoder_mlp_dim": 32}}
    raw = ts.tiny_config(tmp_path / "mae", objective=mae, train={"steps": 4, "checkpoint_every": 2})
    config = ts.write_config(tmp_path / "mae.yaml", raw)
    assert_backend_stopped(run_cli(config, torchrun=2), ranks=2)
    ddp = losses_in(tmp_path / "mae")
    shutil.rmtree(tmp_path / "mae/checkpoints/step-00000004")
    proc = run_cli(config, "--set", "distributed.strategy=fsdp", torchrun=2)  # the decoder sharded too
    assert "(step 2/4)" in proc.stdout
    resumed = losses_in(tmp_path / "mae")
    assert resumed[:2] == ddp[:2] and torch.allclose(torch.tensor(resumed), torch.tensor(ddp), rtol=1e-4)
    assert (tmp_path / "mae/checkpoints/step-00000004/objective.safetensors").is_file()

    raw = ts.tiny_config(tmp_path / "mpp", objective={"name": "mpp"}, train={"steps": 2})
    proc = run_cli(ts.write_config(tmp_path / "mpp.yaml", raw), "--set", "distributed.strategy=fsdp", torchrun=2)
    assert "eval masked accuracy" in proc.stdout
