"""The recipes that ship with vitlab: every one loads and passes validation, runs by name, lists with its
description; `base = "..."` inheritance; one owner per value."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

import training_support as ts
from vitlab import recipes
from vitlab.cli import main
from vitlab.training.config import ConfigError, load_config, to_yaml

CONFIGS = recipes.FOLDER
RECIPES = sorted(CONFIGS.glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_loads_and_validates(path):
    cfg = load_config(path, check_paths=False)  # the files they name (checkpoints, data folders) are not here
    assert cfg.run_dir.startswith("runs/")


def test_the_main_job_passes_check_through_the_cli(capsys):
    assert main(["train", str(CONFIGS / "fashion-mnist.toml"), "--check"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in resolved and resolved["data"]["image_size"] == 28 and resolved["optim"]["lr"] == 1.4e-3


# ---- recipes by name ----------------------------------------------------------------------------------
def test_a_recipe_runs_by_name_from_any_folder_and_check_prints_a_config_that_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "fashion-mnist", "--check"]) == 0
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)
    assert resolved == yaml.safe_load(to_yaml(load_config(CONFIGS / "fashion-mnist.toml")))  # name = file
    assert resolved["optim"]["betas"] == [0.9, 0.99]  # from its base, resolved inside the package
    assert resolved["run_dir"] == "runs/fashion-mnist-pretrain" and "description" not in resolved
    (tmp_path / "mine.yaml").write_text(printed.replace("lr: 0.0014", "lr: 0.002"))  # saved and edited
    assert load_config("mine.yaml").optim.lr == 0.002


def test_a_config_file_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("fashion-mnist", check_paths=False).run_dir == "runs/fashion-mnist-pretrain"
    ts.write_config(tmp_path / "fashion-mnist", ts.tiny_config(tmp_path / "mine"))
    with pytest.raises(ConfigError, match="fashion-mnist: a config must be .toml"):  # the file, not the recipe
        load_config("fashion-mnist", check_paths=False)


def test_an_unknown_recipe_is_one_line_naming_the_closest(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "configs/fashion-mnist.toml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "configs/fashion-mnist.toml" in err and "did you mean the recipe " \
        "'fashion-mnist'" in err and "vitlab recipes" in err


def test_recipes_lists_every_recipe_with_its_description(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(p.stem for p in RECIPES)
    for line in lines:
        described = tomllib.loads((CONFIGS / f"{line.split()[0]}.toml").read_text())["description"]
        assert line.endswith(described) and 20 < len(described) <= 100, line


def test_every_config_file_declares_a_one_line_description_and_the_reader_keeps_it_out_of_the_settings(tmp_path):
    for path in sorted(CONFIGS.glob("**/*.toml")):
        description = tomllib.loads(path.read_text()).get("description")
        assert isinstance(description, str) and "\n" not in description, path
    (tmp_path / "c.toml").write_text('description = ["not", "text"]\n')
    with pytest.raises(ConfigError, match=r"c\.toml: description must be one line of text"):
        load_config(tmp_path / "c.toml", check_paths=False)


def test_every_base_is_used():
    bases = {path: tomllib.loads(path.read_text()).get("base") for path in RECIPES}
    used = {(path.parent / base).resolve() for path, base in bases.items() if base}
    for base in CONFIGS.glob("base/*.toml"):
        assert base.resolve() in used, f"{base} is the base of no recipe"


# The values each fine-tuning recipe held before it was rewritten on base/finetune.toml (read from the
# original files): data set, splits, lr, warm-up, steps, eval/checkpoint interval, EMA.
FINETUNE = {
    "cifar10": ("cifar10", "train[:98%]", "train[98%:]", 0.03, 500, 10000, 1000, None),
    "cifar100": ("cifar100", "train[:98%]", "train[98%:]", 0.03, 500, 10000, 1000, None),
    "flowers": ("folder:/data/oxford-flowers102", "train[:98%]", "train[98%:]", 0.003, 100, 500, 100, None),
    "pets": ("folder:/data/oxford-iiit-pets", "train[:98%]", "train[98%:]", 0.003, 100, 500, 100, None),
    "imagenet-384": ("folder:/data/imagenet", "train[:98%]", "train[98%:]", 0.03, 500, 20000, 2000, 0.9999),
    "vtab-dtd": ("folder:/data/vtab-1k/dtd", "train800", "val200", 0.01, 200, 2500, 500, None),
}


@pytest.mark.parametrize("name", FINETUNE)
def test_finetune_recipes_resolve_to_what_they_were(name):
    cfg = load_config(CONFIGS / f"finetune-{name}.toml", check_paths=False)
    dataset, train_split, eval_split, lr, warmup, steps, every, ema = FINETUNE[name]
    assert (cfg.data.dataset, cfg.data.train_split, cfg.data.eval_split) == (dataset, train_split, eval_split)
    assert (cfg.optim.lr, cfg.schedule.warmup_steps, cfg.train.steps) == (lr, warmup, steps)
    assert (cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.ema_decay) == (every, every, ema)
    assert cfg.run_dir == f"runs/finetune-{name}"
    # the paper's shared recipe (Appendix B.1.1)
    assert (cfg.model.name, cfg.model.init, cfg.model.reset_head) == ("ViT-B/16", "checkpoints/ViT-B_16.npz", True)
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.9, 0.0)
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.data.num_workers) == (384, 512, 8)
    assert cfg.data.inception_crop and cfg.data.flip and cfg.schedule.decay == "cosine"
    assert (cfg.train.clip_grad_norm, cfg.train.precision, cfg.train.log_every, cfg.seed) == (1.0, "auto", 50, 0)


# ---- base = "..." -------------------------------------------------------------------------------------
def test_base_chains_deep_merge_and_paths_relative_to_the_including_file(tmp_path):
    (tmp_path / "bases").mkdir()
    (tmp_path / "bases" / "root.toml").write_text(
        'seed = 3\n[model]\nname = "ViT-Ti/16"\noverrides = { patch_size = 4, width = 32, num_heads = 2 }\n'
        '[data]\nimage_size = 16\nin_chans = 1\n[train]\nsteps = 5\n')
    (tmp_path / "bases" / "middle.toml").write_text(
        'base = "root.toml"\n[model.overrides]\ndepth = 2\n[train]\nlog_every = 2\n')
    (tmp_path / "leaf.yaml").write_text("base: bases/middle.toml\ntrain: {steps: 7}\n")
    cfg = load_config(tmp_path / "leaf.yaml", check_paths=False)
    assert cfg.seed == 3 and cfg.model.overrides == {"patch_size": 4, "width": 32, "num_heads": 2, "depth": 2}
    assert (cfg.train.steps, cfg.train.log_every, cfg.data.image_size) == (7, 2, 16)
    assert cfg.run_dir == "runs/leaf"  # the including file's name, never the base's
    (tmp_path / "bases" / "root.toml").write_text('base = "../leaf.yaml"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "leaf.yaml", check_paths=False)


def test_the_run_saves_the_resolved_config(tmp_path, capsys):
    raw = ts.tiny_config(tmp_path / "run", train={"steps": 1, "checkpoint_every": 1})
    base = ts.write_config(tmp_path / "base.yaml", raw)
    (tmp_path / "child.yaml").write_text(f"base: {base.name}\noptim: {{lr: 0.002}}\n")
    assert main(["train", str(tmp_path / "child.yaml")]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert "base" not in saved and saved["optim"]["lr"] == 0.002 and saved["optim"]["weight_decay"] == 0.05
    assert saved["model"]["overrides"]["width"] == 32


# ---- one owner per value ------------------------------------------------------------------------------
@pytest.mark.parametrize("override,owner", [("image_size=32", "data.image_size"), ("in_chans=3", "data.in_chans"),
                                            ("num_classes=7", "data.dataset")])
def test_a_value_has_one_owner(override, owner, tmp_path):
    raw = ts.tiny_config(tmp_path / "run", data={"dataset": "cifar10"})
    with pytest.raises(ConfigError, match=owner):
        load_config(ts.write_config(tmp_path / "c.yaml", raw), [f"model.overrides.{override}"], check_paths=False)
    same = {"image_size=32": "image_size=16", "in_chans=3": "in_chans=1", "num_classes=7": "num_classes=10"}
    load_config(tmp_path / "c.yaml", [f"model.overrides.{same[override]}"], check_paths=False)  # agreeing is fine


def test_data_normalize_is_read_as_normalisation_with_a_note(capsys):
    from vitlab.training.config import from_dict

    cfg = from_dict({"data": {"normalize": "mean_std"}})
    assert cfg.data.normalisation == "mean_std" and "data.normalisation" in capsys.readouterr().err
    assert "normalize" not in cfg.to_dict()["data"]  # one spelling in what a run writes
    with pytest.raises(ConfigError, match="set normalisation only"):
        from_dict({"data": {"normalize": "mean_std", "normalisation": "minus_one_one"}})
