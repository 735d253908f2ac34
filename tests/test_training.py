"""The training engine in one process: configs and their errors, the step, resume, fine-tuning."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

import training_support as ts
from vitlab.cli import main as cli_main
from vitlab.training import ConfigError, Trainer, TrainingDiverged, from_dict, train
from vitlab.training.config import load_config, validate
from vitlab.training.optim import build_optimizer, param_groups
from vitlab.training.schedule import lr_factor


def config(tmp_path, **sections):
    return validate(from_dict(ts.tiny_config(tmp_path / "run", **sections)))


def losses_in(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


# ---- the step -------------------------------------------------------------------------------------------
def test_tiny_run_learns_and_leaves_its_files(tmp_path):
    cfg = config(tmp_path, train={"steps": 16, "plot": True, "ema_decay": 0.9})
    result = train(cfg)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < 0.9 * first, result.losses
    assert result.last_metric > 0.5 and result.last_metric_ema is not None
    run = tmp_path / "run"
    assert losses_in(run) == result.losses
    for name in ("config.yaml", "metrics.jsonl", "training_curves.png", "summary.json"):
        assert (run / name).is_file(), name
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-00000012", "step-00000016"]  # every 4 steps, the last 2 kept
    assert (run / "checkpoints/step-00000016/ema/model.safetensors").is_file()
    import vitlab

    model = vitlab.load_pretrained(run / "checkpoints/step-00000016")
    assert model.config.num_classes == 4 and model.label_names == ["a", "b", "c", "d"]


def test_time_budget_stops_evaluates_and_saves(tmp_path):
    cfg = config(tmp_path, train={"steps": 16, "max_minutes": 1e-6})
    result = train(cfg)
    assert result.out_of_time and result.steps == 1 and result.last_metric is not None
    assert (tmp_path / "run/checkpoints/step-00000001/model.safetensors").is_file()
    assert "max_minutes reached" in result.summary()


def test_a_schedule_that_follows_the_time_budget_decays_fully_before_it(tmp_path, capsys):
    """Far more steps than fit in 2 s: with schedule.follow_time the cosine decay runs on the clock and the last
    steps train near end_factor; without it the run stops at its peak learning rate, its decay cut short."""
    lrs = {}
    for follow in (True, False):
        cfg = config(tmp_path / str(follow), train={"steps": 10**6, "max_minutes": 2 / 60, "checkpoint_every": 10**6},
                     optim={"lr": 0.01}, schedule={"warmup_steps": 2, "follow_time": follow})
        result = train(cfg)
        assert result.out_of_time and 5 < result.steps < 10**6
        lrs[follow] = [r["lr"] for r in map(json.loads, (tmp_path / str(follow) / "run/metrics.jsonl")
                                            .read_text().splitlines()) if "lr" in r]
    after_warmup = lrs[True][2:]
    assert after_warmup == sorted(after_warmup, reverse=True) and after_warmup[-1] < 0.004, lrs[True]
    assert min(lrs[False][1:]) > 0.0099  # steps-based: the cosine has barely begun
    etas = re.findall(r"eta (\S+)", capsys.readouterr().out)
    assert etas and all(eta.startswith("0m0") for eta in etas), etas  # the budget's 2 s, not a million steps'


def test_resume_continues_the_same_trajectory_exactly(tmp_path):
    cfg = config(tmp_path, train={"steps": 12, "ema_decay": 0.9, "accumulation_steps": 2},
                 model={"overrides": dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2,
                                          dropout=0.1, drop_path=0.1)})
    full = train(cfg)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints/step-00000012")  # as if the run had died after step 8's checkpoint
    resumed = train(cfg)
    assert resumed.resumed_from == 8
    assert resumed.losses == full.losses[8:]  # exact on CPU: RNG, loader position, optimiser, EMA all restored
    assert losses_in(run) == full.losses
    assert resumed.last_metric_ema == full.last_metric_ema


def test_sigterm_saves_a_checkpoint_then_the_run_resumes_exactly(tmp_path):
    import os
    import signal

    cfg = config(tmp_path, train={"steps": 10, "checkpoint_every": 100})
    reference = train(config(tmp_path / "ref", train={"steps": 10, "checkpoint_every": 100}))
    calls = {"n": 0}

    def terminate_at_fifth_forward(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)  # caught: the step finishes, a checkpoint is written
        return output

    trainer = Trainer(cfg)
    trainer.model.register_forward_hook(terminate_at_fifth_forward)
    stopped = trainer.fit()
    assert stopped.interrupted_by == signal.SIGTERM and stopped.steps == 5
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step-00000005"]
    resumed = train(cfg)
    assert resumed.resumed_from == 5 and stopped.losses + resumed.losses == reference.losses


def test_bf16_and_sigmoid_and_sgd_run(tmp_path):
    cfg = config(tmp_path, train={"steps": 4, "precision": "bf16", "clip_grad_norm": None},
                 loss={"kind": "sigmoid", "label_smoothing": 0.1}, optim={"name": "sgd", "lr": 0.1})
    result = train(cfg)
    assert all(math.isfinite(x) for x in result.losses)


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path):
    cfg = config(tmp_path, train={"steps": 8})
    calls = {"n": 0}

    def poison_sixth_forward(module, inputs, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 6 else output

    trainer = Trainer(cfg)
    trainer.model.register_forward_hook(poison_sixth_forward)
    with pytest.raises(TrainingDiverged, match=r"at step 6; .*step-00000004"):
        trainer.fit()
    assert [p.name for p in (tmp_path / "run/checkpoints").iterdir()] == ["step-00000004"]

    cfg.train.on_nan = "skip"
    cfg.run_dir = str(tmp_path / "skip")
    calls["n"] = 0
    trainer = Trainer(cfg)
    trainer.model.register_forward_hook(poison_sixth_forward)
    result = trainer.fit()
    assert result.skipped_steps == 1 and result.steps == 8


# ---- optimiser and schedule -------------------------------------------------------------------------------
def test_weight_decay_spares_biases_norms_posemb_and_cls_token():
    import vitlab
    from vitlab.training.config import OptimConfig

    model = vitlab.create_model("ViT-Ti/16", **ts.tiny_config("x")["model"]["overrides"], image_size=16)
    groups = param_groups(model, OptimConfig(weight_decay=0.1))
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["names"]}
    spared = {n for g in groups if g["weight_decay"] == 0 for n in g["names"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= spared
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "head.weight"} <= decayed
    groups = param_groups(model, OptimConfig(weight_decay=0.1, decay_all=True, layer_decay=0.5))
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0 and scale["blocks.1.mlp.fc1.weight"] == 0.5
    assert scale["blocks.0.mlp.fc1.weight"] == 0.25 and scale["pos_embed"] == 0.125
    for name in ("adam", "adamw", "sgd", "adagrad"):
        optimizer = build_optimizer(model, OptimConfig(name=name))
        assert optimizer.__class__.__name__.lower() == name
        assert optimizer.defaults["fused"]  # one kernel for every parameter, on CPU too
        assert not build_optimizer(model, OptimConfig(name=name), sharded=True).defaults.get("fused")
        model.zero_grad()
        model(torch.randn(2, model.config.in_chans, 16, 16)).square().sum().backward()
        optimizer.step()  # the fused CPU kernel exists for this optimiser


def test_schedule_warms_up_linearly_then_decays():
    assert [lr_factor(s, 10, 4, "linear") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "cosine") == 1.0 and lr_factor(9, 10, 4, "cosine") == pytest.approx(0.0)
    assert lr_factor(9, 10, 4, "linear", end_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(6, 10, 0, "constant") == 1.0
    # a time budget spent faster than the steps moves the decay on; one spent slower changes nothing
    assert lr_factor(5, 1000, 0, "linear", time_done=0.75) == pytest.approx(0.25)
    assert lr_factor(5, 1000, 0, "linear", time_done=1.0) == 0.0
    assert lr_factor(900, 1001, 0, "linear", time_done=0.2) == pytest.approx(0.1)


# ---- config errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets, message", [
    (["optim.lrr=0.1"], r"unknown config key optim\.lrr; did you mean optim\.lr\?"),
    (["trian.steps=3"], r"unknown config key trian; did you mean train\?"),
    (["optim.lr=fast"], r"optim\.lr must be float, not str 'fast'"),
    (["train.steps=2.5"], r"train\.steps must be int"),
    (["optim.betas=[0.9]"], r"optim\.betas must hold 2 values"),
    (["data.dataset=folder:/no/such/dir"], r"data\.dataset: folder not found: /no/such/dir"),
    (["model.init=/no/such/ckpt"], r"model\.init: checkpoint not found"),
    (["data.batch_size=10", "train.accumulation_steps=4"], r"batch_size 10 .* not divisible by world size 1 x "),
    (["optim.name=adamm"], r"optim\.name = 'adamm' is not one of .*did you mean 'adam'"),
    (["model.name=ViT-Q/16"], r"model\.name"),
    (["train.epochs=3"], r"exactly one of train\.steps and train\.epochs"),
    (["schedule.follow_time=true"], r"schedule\.follow_time = true needs a time budget: set train\.max_minutes"),
])
def test_bad_config_is_refused_before_work_starts(tmp_path, sets, message):
    path = ts.write_config(tmp_path / "c.yaml", ts.tiny_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match=message):
        load_config(path, sets)
    assert not (tmp_path / "run").exists()


def test_batch_must_divide_by_world_size(tmp_path):
    path = ts.write_config(tmp_path / "c.yaml", ts.tiny_config(tmp_path / "run"))
    with pytest.raises(ConfigError, match="not divisible by world size 3"):
        load_config(path, world_size=3)


def test_cli_reports_bad_config_and_overrides_are_typed(tmp_path, capsys):
    path = ts.write_config(tmp_path / "c.yaml", ts.tiny_config(tmp_path / "run"))
    assert cli_main(["train", str(path), "--set", "optim.weight_decy=0.1"]) == 2
    assert "did you mean optim.weight_decay" in capsys.readouterr().err
    assert cli_main(["train", str(path), "--check", "--set", "optim.lr=3e-4", "--set", "optim.betas=[0.9, 0.95]",
                     "--set", "train.ema_decay=0.99", "--set", "train.clip_grad_norm=none"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0003" in out and "ema_decay: 0.99" in out and "clip_grad_norm: null" in out


# ---- fine-tuning -------------------------------------------------------------------------------------------
def finetune_from(tmp_path, init_path, source_state: dict, image_size=32):
    """Fine-tune at a higher resolution; the encoder starts as the checkpoint's, the head at zero."""
    cfg = config(tmp_path, model={"name": "ViT-Ti/16", "init": str(init_path), "overrides": {}},
                 data={"image_size": image_size}, optim={"name": "sgd", "lr": 0.01, "weight_decay": 0.0},
                 train={"steps": 3})
    trainer = Trainer(cfg)
    model = trainer.model
    assert model.config.image_size == image_size and model.pos_embed.shape[1] == 1 + (image_size // 4) ** 2
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source_state["blocks.1.mlp.fc2.weight"])
    assert torch.equal(model.pos_embed[:, 0], source_state["pos_embed"][:, 0])  # class token's kept apart
    assert model.head.weight.abs().sum() == 0 and model.head.out_features == 4
    result = trainer.fit()
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    assert result.losses[0] == pytest.approx(math.log(4), abs=1e-6)  # zero head: uniform first prediction


def pretrained_source(num_classes=7):
    import vitlab

    torch.manual_seed(1)
    model = vitlab.create_model("ViT-Ti/16", **ts.tiny_config("x")["model"]["overrides"], image_size=16,
                                in_chans=1, num_classes=num_classes)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model


def test_finetune_from_vitlab_checkpoint_at_higher_resolution(tmp_path):
    import vitlab

    source = pretrained_source(num_classes=4)  # same classes: the head is still replaced (model.reset_head)
    vitlab.save_pretrained(source, tmp_path / "pretrained")
    finetune_from(tmp_path, tmp_path / "pretrained", source.state_dict())


def test_finetune_from_hf_checkpoint_at_higher_resolution(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=16, patch_size=4, num_channels=1, num_labels=7,
                                    layer_norm_eps=1e-6)
    torch.manual_seed(1)
    hf = transformers.ViTForImageClassification(hf_cfg)
    hf.save_pretrained(tmp_path / "hf")
    import vitlab

    ours = vitlab.load_pretrained(tmp_path / "hf")
    finetune_from(tmp_path, tmp_path / "hf", ours.state_dict())


def test_every_checked_in_recipe_is_a_valid_config():
    from vitlab import recipes

    configs = sorted(recipes.FOLDER.glob("*.toml"))
    assert len(configs) >= 9
    for path in configs:
        cfg = load_config(path, check_paths=False)
        assert cfg.run_dir.startswith("runs/"), path
        if path.stem.startswith("finetune-"):
            assert cfg.optim.name == "sgd" and cfg.optim.momentum == 0.9 and cfg.data.batch_size == 512
            assert cfg.optim.weight_decay == 0 and cfg.train.clip_grad_norm == 1 and cfg.schedule.decay == "cosine"
            assert cfg.model.init and cfg.model.reset_head


def test_finetune_from_official_npz_checkpoint_at_higher_resolution(tmp_path):
    from vitlab.checkpoints.npz_official import save_official_npz

    source = pretrained_source(num_classes=7)
    save_official_npz(source, tmp_path / "ViT-tiny.npz")
    finetune_from(tmp_path, tmp_path / "ViT-tiny.npz", source.state_dict())


def test_saving_the_same_step_again_and_pruning_leave_only_complete_checkpoints(tmp_path):
    cfg = config(tmp_path, train={"steps": 8})
    train(cfg)
    trainer = Trainer(cfg)  # a finished run whose last step is saved again (its checkpoint is replaced)
    trainer.save()
    assert trainer.step == 8
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert names == ["step-00000004", "step-00000008"]
    assert (tmp_path / "run/checkpoints/step-00000008/optimizer.pt").is_file()
