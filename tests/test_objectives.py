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
    assert result.metric == "eval_masked_accuracy" and 0.0 <= result.last_accuracy <= 1.0
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
])
def test_bad_objective_settings_are_refused_before_work(tmp_path, sets, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, **sets)
