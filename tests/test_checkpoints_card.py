"""The README.md model card save_pretrained writes beside the weights."""

import json
import sys

from conftest import tiny

from vitlab import __version__, create_model, load_pretrained, save_pretrained
from vitlab.cli import main


def test_card_describes_architecture_preprocessing_metrics_and_command(tmp_path):
    model = create_model("ViT-Ti/16", **tiny(patch_size=8))
    save_pretrained(model, tmp_path / "m", label_names=list("abcde"), metrics={"step": 300, "best_accuracy": 0.9125},
                    command="vitlab train my-recipe.toml")
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: vitlab\n")
    assert f"- parameters: {sum(p.numel() for p in model.parameters()):,}" in card
    assert "- width: 32" in card and "- depth: 2" in card and "- patch_size: 8" in card
    assert "x / 127.5 - 1" in card and "Resize to 32 x 32 px (bilinear)" in card
    assert "5 classes: a, b, c, d, e" in card
    assert "| best_accuracy | 91.25% |" in card and "| step | 300 |" in card
    assert "```bash\nvitlab train my-recipe.toml\n```" in card
    assert f"Written by vitlab {__version__}." in card  # and in config.json, for programs
    assert json.loads((tmp_path / "m" / "config.json").read_text())["vitlab_version"] == __version__
    assert load_pretrained(tmp_path / "m").config.width == 32  # the card does not disturb loading


def test_card_says_what_is_unknown(tmp_path):
    model = create_model("ViT-Ti/16", **tiny(patch_size=8, num_classes=0))
    model.preprocessing = {"normalisation": "mean_std", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2],
                           "resize_crop": True, "crop_fraction": 0.875, "interpolation": "bicubic"}
    save_pretrained(model, tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "None recorded with these weights" in card and "Not recorded" in card
    assert "a feature extractor" in card and "minus mean [0.5, 0.4, 0.3]" in card
    assert "Centre crop of 0.875 of the image, resized to 32 x 32 px (bicubic)" in card


def test_card_records_the_vitlab_command_that_wrote_it(tmp_path, monkeypatch):
    model = create_model("ViT-Ti/16", **tiny(patch_size=8))
    save_pretrained(model, tmp_path / "src")
    argv = ["convert", str(tmp_path / "src"), str(tmp_path / "out"), "--to", "vitlab"]
    monkeypatch.setattr(sys, "argv", ["/usr/local/bin/vitlab", *argv])
    assert main(argv) == 0
    assert f"vitlab convert {tmp_path / 'src'} {tmp_path / 'out'} --to vitlab" in (tmp_path / "out" / "README.md").read_text()


def test_training_checkpoints_carry_the_runs_metrics(tmp_path):
    import training_support as ts

    from vitlab.training import from_dict, train
    from vitlab.training.config import validate

    train(validate(from_dict(ts.tiny_config(tmp_path / "run", train={"steps": 4, "checkpoint_every": 4,
                                                                       "eval_every": 4}))))
    card = (tmp_path / "run" / "checkpoints" / "step-00000004" / "README.md").read_text()
    assert "| step | 4 |" in card and "| train_time_s |" in card


def test_a_runs_metric_is_a_percentage_only_when_it_is_an_accuracy():
    from vitlab.checkpoints.model_card import describe_metrics

    accuracy = describe_metrics({"metric": "eval_accuracy", "best_metric": 0.9, "last_metric_ema": 0.85})
    assert "| best_metric | 90.00% |" in accuracy and "| last_metric_ema | 85.00% |" in accuracy
    loss = describe_metrics({"metric": "eval_loss", "best_metric": 0.25})
    assert "| best_metric | 0.25 |" in loss and "| metric | eval_loss |" in loss
