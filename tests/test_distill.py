"""DeiT distillation: the losses against a hand computation, the frozen teacher, and runs through the Trainer."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

import training_support as ts
from vitlab.cli import main as cli_main
from vitlab.training import Trainer, from_dict, train
from vitlab.training.config import ConfigError, validate
from vitlab.data.preprocessing import Preprocessing
from vitlab.training.objectives.distillation import Teacher, distillation_loss

CLASS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
DIST = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
TEACHER = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 2.0]])
LABELS = torch.tensor([0, 2])


def log_softmax(row, tau=1.0):
    z = [v / tau for v in row]
    log_total = math.log(sum(math.exp(v) for v in z))
    return [v - log_total for v in z]


def cross_entropy(rows, labels):
    return sum(-log_softmax(r)[y] for r, y in zip(rows, labels)) / len(rows)


def test_hard_loss_is_half_label_ce_and_half_teacher_argmax_ce():
    base = cross_entropy(CLASS.tolist(), LABELS.tolist())
    # the teacher's argmax: 1 for the first image, 2 for the second
    term = cross_entropy(DIST.tolist(), [1, 2])
    expected = 0.5 * base + 0.5 * term
    loss = distillation_loss((CLASS, DIST), LABELS, TEACHER, mode="hard", alpha=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_soft_loss_is_tau_squared_kl_of_the_distillation_head_over_batch_times_classes():
    tau, alpha = 3.0, 0.1
    base = cross_entropy(CLASS.tolist(), LABELS.tolist())
    kl = 0.0
    for s_row, t_row in zip(DIST.tolist(), TEACHER.tolist()):
        log_p_t, log_p_s = log_softmax(t_row, tau), log_softmax(s_row, tau)
        kl += sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_p_t, log_p_s))
    term = tau**2 * kl / (2 * 3)  # DeiT divides the summed KL by batch x classes
    expected = (1 - alpha) * base + alpha * term
    loss = distillation_loss((CLASS, DIST), LABELS, TEACHER, mode="soft", alpha=alpha, tau=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_the_class_head_learns_only_the_labels_and_the_distillation_head_only_the_teacher():
    def grads(labels, teacher):
        c, d = CLASS.clone().requires_grad_(), DIST.clone().requires_grad_()
        distillation_loss((c, d), labels, teacher, mode="soft", alpha=0.1, tau=3.0).backward()
        return c.grad, d.grad

    class_grad, dist_grad = grads(LABELS, TEACHER)
    other_teacher = grads(LABELS, TEACHER.flip(0))
    other_labels = grads(LABELS.flip(0), TEACHER)
    assert torch.equal(class_grad, other_teacher[0]) and not torch.equal(dist_grad, other_teacher[1])
    assert torch.equal(dist_grad, other_labels[1]) and not torch.equal(class_grad, other_labels[0])


def test_one_output_serves_both_terms_and_soft_targets_reach_the_class_head():
    soft = torch.nn.functional.one_hot(LABELS, 3).float()
    a = distillation_loss(CLASS, soft, TEACHER, mode="hard", alpha=0.5)
    b = distillation_loss((CLASS, CLASS), LABELS, TEACHER, mode="hard", alpha=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_teacher_stays_frozen_in_eval_mode_inside_a_training_module():
    teacher_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    teacher_model.config = type("Cfg", (), {"num_classes": 3, "image_size": 4})()
    teacher = Teacher(teacher_model)
    parent = torch.nn.ModuleDict({"teacher": teacher, "student": torch.nn.Linear(16, 3)})
    parent.train()
    assert not teacher.training and not teacher.model.training and not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(5, 1, 4, 4, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad  # no graph through the teacher
    assert torch.equal(out, teacher(x))  # dropout is off: the same batch gives the same targets


def test_the_teacher_gets_the_batch_normalised_as_its_own_record_says():
    """The student's inputs (x / 127.5 - 1) reach a teacher trained on ImageNet mean/std normalised its way; a
    teacher without a record gets them as they are."""
    mean_std = {"normalisation": "mean_std", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    seen = []
    model = torch.nn.Module()
    model.config = type("Config", (), {"num_classes": 2, "image_size": 4})()
    model.forward = lambda x: seen.append(x) or x.mean((2, 3))[:, :2]
    pixels = torch.rand(2, 3, 4, 4)
    for record, expected in ((mean_std, Preprocessing(normalisation="mean_std", mean=mean_std["mean"],
                                                      std=mean_std["std"]).normalise(pixels * 255)),
                             (None, pixels * 2 - 1)):
        model.preprocessing = record
        Teacher(model, student_preprocessing={"normalisation": "minus_one_one"})(pixels * 2 - 1)
        assert torch.allclose(seen.pop(), expected, atol=1e-5)


# ---- through the Trainer ----------------------------------------------------------------------------------------
TINY = dict(patch_size=4, width=32, depth=2, mlp_dim=64, num_heads=2)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A `vitlab train` run directory whose model (a tiny ViT, 4 classes) serves as the teacher."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(validate(from_dict(ts.tiny_config(run, train={"steps": 8}))))
    return run


def student_config(tmp_path, teacher, distillation=None, **sections):
    raw = ts.tiny_config(tmp_path / "student", **sections)
    raw["objective"] = {"name": "distillation", "distillation": {"teacher": str(teacher), **(distillation or {})}}
    return validate(from_dict(raw))


def test_a_distillation_run_trains_the_student_and_never_the_teacher(tmp_path, teacher_dir):
    cfg = student_config(tmp_path, teacher_dir, {"mode": "soft"}, train={"steps": 6, "ema_decay": 0.9})
    trainer = Trainer(cfg)
    teacher = trainer.objective.teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    result = trainer.fit()
    assert result.steps == 6 and result.last_metric is not None
    assert not teacher.training and all(not m.training for m in teacher.modules())  # fit() called train()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    # the teacher is no part of what is optimised, averaged or saved
    assert not any(p is q for p in teacher.parameters() for g in trainer.optimizer.param_groups for q in g["params"])
    step = tmp_path / "student/checkpoints/step-00000006"
    assert not (step / "objective.safetensors").exists()
    lines = [json.loads(line) for line in (tmp_path / "student/metrics.jsonl").read_text().splitlines()]
    assert {"loss_labels", "loss_teacher"} <= set(lines[0])


def test_a_distillation_run_resumes_exactly(tmp_path, teacher_dir):
    cfg = student_config(tmp_path, teacher_dir, train={"steps": 12},
                         model={"overrides": dict(TINY, dropout=0.1, drop_path=0.1)})
    full = train(cfg)
    shutil.rmtree(tmp_path / "student/checkpoints/step-00000012")  # as if it had died after step 8
    resumed = train(cfg)
    assert resumed.resumed_from == 8 and resumed.losses == full.losses[8:]
    assert resumed.last_metric == full.last_metric
    # the teacher's run went on meanwhile: its newest checkpoint is not the one that taught this run
    newer = teacher_dir / "checkpoints/step-00000099"
    shutil.copytree(teacher_dir / "checkpoints/step-00000008", newer)
    try:
        with pytest.raises(ConfigError, match="set objective.distillation.teacher=.*step-00000008 to resume it exactly"):
            Trainer(student_config(tmp_path, teacher_dir, train={"steps": 16}))
    finally:
        shutil.rmtree(newer)


def test_a_teacher_that_cannot_teach_this_data_is_refused_before_training(tmp_path, teacher_dir, capsys):
    with pytest.raises(ConfigError, match="objective.distillation.teacher: checkpoint not found"):
        student_config(tmp_path, tmp_path / "missing")
    other = tmp_path / "other"
    import vitlab

    vitlab.save_pretrained(vitlab.create_model("ViT-Ti/16", image_size=16, in_chans=1, num_classes=7, **TINY), other)
    with pytest.raises(ConfigError, match="predicts 7 classes, but the data has 4"):
        Trainer(student_config(tmp_path, other))
    assert not (tmp_path / "student/checkpoints").exists()
    with pytest.raises(ConfigError, match="objective.distillation.mode = 'medium' is not one of hard, soft"):
        student_config(tmp_path, teacher_dir, {"mode": "medium"})
    with pytest.raises(ConfigError, match="needs objective.distillation.teacher"):
        validate(from_dict(ts.tiny_config(tmp_path / "student", objective={"name": "distillation"})))
    config_file = ts.write_config(tmp_path / "student.yaml", ts.tiny_config(
        tmp_path / "student", objective={"name": "distillation", "distillation": {"teacher": str(other)}}))
    assert cli_main(["train", str(config_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicts 7 classes" in err[0], err


# ---- a student with DeiT's distillation token -----------------------------------------------------------------
STUDENT = dict(TINY, distill_token=True)


def test_evaluation_averages_the_two_heads_and_reports_each(tmp_path):
    import vitlab
    from vitlab.runtime import Dist
    from vitlab.training.objectives.distillation import evaluate_heads

    torch.manual_seed(0)
    model = vitlab.create_model("ViT-Ti/16", image_size=16, in_chans=1, num_classes=4, **STUDENT)
    for head in (model.head, model.head_dist):  # two heads that disagree (a new model's are zero)
        torch.nn.init.normal_(head.weight, std=1.0)
    images = torch.randn(64, 1, 16, 16)
    with torch.no_grad():
        model.eval()
        class_logits, dist_logits = model.forward_heads(images)
        torch.testing.assert_close(model(images), (class_logits + dist_logits) / 2)
    labels = dist_logits.argmax(-1)  # the distillation head is always right, the class head often not
    loader = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    model.train()
    got = evaluate_heads(model, loader, Dist(device=torch.device("cpu")))
    expected = ((class_logits + dist_logits) / 2).argmax(-1).eq(labels).float().mean().item()
    assert got["eval_accuracy"] == pytest.approx(expected)
    assert got["eval_accuracy_dist_head"] == 1.0
    assert got["eval_accuracy_class_head"] == pytest.approx(class_logits.argmax(-1).eq(labels).float().mean().item())
    assert got["eval_accuracy_class_head"] < 1.0 and model.training  # left as it was found


def test_a_distilled_student_trains_both_heads_and_its_checkpoint_keeps_the_token(tmp_path, teacher_dir):
    import vitlab

    cfg = student_config(tmp_path, teacher_dir, {"mode": "hard"}, model={"overrides": STUDENT},
                         train={"steps": 6})
    trainer = Trainer(cfg)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    trained = trainer.model.state_dict()
    for key in ("dist_token", "head_dist.weight", "head.weight", "cls_token"):
        assert not torch.equal(start[key], trained[key]), key  # the class and the distillation head both learn
    records = [json.loads(line) for line in (tmp_path / "student/metrics.jsonl").read_text().splitlines()]
    final = records[-1]
    assert {"eval_accuracy", "eval_accuracy_class_head", "eval_accuracy_dist_head"} <= set(final)
    assert final["eval_accuracy"] == result.last_metric
    loaded = vitlab.load_pretrained(tmp_path / "student")  # the run directory: its newest checkpoint
    assert loaded.config.distill_token and torch.equal(loaded.dist_token, trained["dist_token"])
    bigger = vitlab.load_pretrained(tmp_path / "student", image_size=24)  # resampled like the class token
    assert bigger.pos_embed.shape[1] == 2 + 36 and torch.equal(bigger.pos_embed[:, :2], trained["pos_embed"][:, :2])


def test_recipes_name_a_teacher_and_a_student_with_a_distillation_token():
    from vitlab import recipes
    from vitlab.training.config import load_config

    root = recipes.FOLDER
    for name, mode in (("deit-s16-distilled-imagenet1k.toml", "hard"), ("fashion-mnist-distilled.toml", "hard")):
        cfg = load_config(root / name, check_paths=False)
        settings = cfg.objective.distillation
        assert cfg.objective.name == "distillation" and settings.teacher and settings.mode == mode, name
        assert settings.weight == 0.5, name
        assert cfg.model.overrides["distill_token"] and cfg.model.overrides.get("classifier", "token") == "token"
        assert cfg.run_dir == f"runs/{name[:-len('.toml')]}"  # never its base's run directory
    teacher = load_config(root / "fashion-mnist-teacher.toml", check_paths=False)
    assert teacher.model.name.startswith("BiT-") and teacher.data.in_chans == 1 and teacher.run_dir == \
        load_config(root / "fashion-mnist-distilled.toml", check_paths=False).objective.distillation.teacher


def test_the_old_distill_table_still_reads_with_a_note(tmp_path, teacher_dir, capsys):
    """`[distill]` (one more release): the same config as `[objective] name = "distillation"`, and one line on
    stderr saying so; without a teacher it distils nothing, as it did; beside a self-supervised objective it is
    refused."""
    new = student_config(tmp_path, teacher_dir, {"mode": "soft", "tau": 2.0})
    capsys.readouterr()
    old = validate(from_dict(ts.tiny_config(tmp_path / "student", distill={"teacher": str(teacher_dir),
                                                                              "mode": "soft", "tau": 2.0})))
    assert old == new
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and note[0].startswith("note: [distill] is now [objective] name = \"distillation\"")
    plain = validate(from_dict(ts.tiny_config(tmp_path / "student", distill={"mode": "soft"})))
    assert plain.objective.name == "classification"
    with pytest.raises(ConfigError, match="distill.teacher needs objective.name = 'classification'"):
        from_dict(ts.tiny_config(tmp_path / "student", distill={"teacher": "t"}, objective={"name": "mpp"}))
