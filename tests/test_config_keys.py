"""Hostile values for every config key, found by a generator: `vitlab train CONFIG --check --set KEY=VALUE`.

The keys are walked from the TrainConfig dataclasses (every key of every table, nested tables too) and the
model's own settings (`model.overrides.KEY`, one per ViTConfig field), so a new key is covered the day it is
added. Each gets each hostile value (0, negative, 2**40, NaN, infinity, a word, an empty string, a list, a table,
a boolean, none) on top of a tiny valid config: `--check` must print the resolved config (exit 0) or refuse in
one line that names the key (exit 2); an exception escaping `main` fails the test with the argument.
"""

from __future__ import annotations

import dataclasses
import traceback
import typing

import pytest

from vitlab.cli import main
from vitlab.models import ViTConfig
from vitlab.training.config import TrainConfig

HOSTILE = ["0", "-3", str(2**40), "nan", "inf", "abc", "''", "[]", "{}", "true", "none"]
# Keys read only under another setting are tried under it: (key prefix, settings), the teacher given by the fixture.
CONTEXT = [("objective.mae.", ["objective.name=mae"]), ("objective.mpp.", ["objective.name=mpp"]),
           ("optim.momentum", ["optim.name=sgd"]), ("optim.nesterov", ["optim.name=sgd"]),
           ("objective.distillation.", ["objective.name=distillation",
                                        "objective.distillation.teacher={teacher}"])]


def config_keys(cls=TrainConfig, prefix: str = "") -> list[str]:
    """Every leaf key of the config's tables, dotted (`data.image_size`), plus model.overrides.FIELD."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += config_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    if cls is TrainConfig:
        keys += [f"model.overrides.{f.name}" for f in dataclasses.fields(ViTConfig)]
    return keys


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A tiny valid config, and a teacher checkpoint of its kind (4 classes, 16 px, 1 channel)."""
    import training_support as ts
    from conftest import tiny

    import vitlab

    root = tmp_path_factory.mktemp("config-keys")
    teacher = vitlab.create_model("ViT-Ti/16", **tiny(patch_size=4, image_size=16, in_chans=1, num_classes=4))
    vitlab.save_pretrained(teacher, root / "teacher")
    return str(ts.write_config(root / "c.yaml", ts.tiny_config(root / "run"))), str(root / "teacher")


def settings_for(key: str, value: str, teacher: str) -> list[str]:
    context = [s.format(teacher=repr(teacher)) for prefix, ss in CONTEXT if key.startswith(prefix) for s in ss]
    return [a for s in [*context, f"{key}={value}"] for a in ("--set", s)]


def check(config: tuple[str, str], key: str, value: str, capsys) -> tuple[object, str]:
    """(exit code, or the traceback of an exception that escaped; stderr) of `vitlab train --check`."""
    path, teacher = config
    try:
        code = main(["train", path, "--check", *settings_for(key, value, teacher)])
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - any escape is what this test looks for
        code = " / ".join(traceback.format_exc().strip().splitlines()[-3:])
    return code, capsys.readouterr().err


def problem(key: str, value: str, code, err: str) -> str | None:
    lines = [line for line in err.splitlines() if line.strip()]
    setting = f"--set {key}={value}"
    if isinstance(code, str):
        return f"{setting}: exception escaped: {code}"
    if code == 0 and not lines:
        return None
    if code != 2 or len(lines) != 1 or not lines[0].startswith("vitlab train: error: "):
        return f"{setting}: exit code {code}, stderr {err!r}"
    name = key.rpartition(".")[2]
    if name not in lines[0] and name.replace("_", " ") not in lines[0]:
        return f"{setting}: the refusal does not name {key}: {lines[0]!r}"
    return None


@pytest.mark.parametrize("table", sorted({k.split(".")[0] for k in config_keys()}))
def test_every_key_refuses_hostile_values_in_one_line(table, config, capsys):
    problems = [problem(key, value, *check(config, key, value, capsys))
                for key in config_keys() if key.split(".")[0] == table for value in HOSTILE]
    problems = [p for p in problems if p]
    assert not problems, f"{len(problems)} hostile settings mishandled:\n" + "\n".join(problems)


def test_the_keys_are_all_there():
    keys = config_keys()
    assert {"seed", "data.image_size", "objective.mae.mask_rate", "log.wandb.mode",
            "model.overrides.patch_size"} <= set(keys)
    assert all(any(key.startswith(prefix) for key in keys) for prefix, _ in CONTEXT)


@pytest.mark.parametrize("prefix", [prefix for prefix, _ in CONTEXT])
def test_each_context_is_a_valid_config(prefix, config, capsys):
    """The settings a key is tried under are themselves accepted (else every refusal would be theirs)."""
    path, teacher = config
    context = settings_for(prefix, "", teacher)[:-2]  # without the key itself
    assert context and main(["train", path, "--check", *context]) == 0, capsys.readouterr().err
