"""`vitlab study`: the grids, the bookkeeping (resume, results, Pareto front), and one quick study end to end."""

from __future__ import annotations

import csv
import json

import pytest

from vitlab.cli import main
from vitlab.studies import SIZES, STUDIES, get_study
from vitlab.studies import runner as study_runner
from vitlab.studies.core import TINY_VIT, Run, Study, fashion_mnist_run
from vitlab.studies.report import group_mean, pareto_front, write_csv
from vitlab.training.config import from_dict, validate

EXPECTED = {"data-efficiency", "scaling", "dimensions", "posemb", "pooling", "optimizers", "axial", "throughput"}


def test_the_eight_studies_are_listed(capsys):
    assert set(STUDIES) == EXPECTED
    assert main(["study", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("size", SIZES)
def test_every_grid_is_declared_and_its_training_configs_validate(name, size):
    runs = get_study(name).runs(size)
    assert runs and len({r.name for r in runs}) == len(runs)
    for run in runs:
        if run.kind == "train":  # a config the engine accepts (paths are the user's at paper scale)
            validate(from_dict({**run.config, "run_dir": "/tmp/x"}), check_paths=False)


def test_paper_grid_dry_run_prints_every_run(capsys):
    assert main(["study", "scaling", "--size", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ViT-H/14" in out and "BiT-R152x2" in out and "4096" in out


def test_unknown_study_is_one_line_and_exit_2(capsys):
    assert main(["study", "posemd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "posemb" in err[0]


def test_pareto_front_on_known_points():
    points = [(1.0, 0.50), (2.0, 0.70), (2.0, 0.60), (3.0, 0.65), (4.0, 0.90), (0.5, 0.40), (5.0, 0.90)]
    assert pareto_front(points) == [5, 0, 1, 4]  # cheapest first; (5, 0.9) adds no accuracy; (3, .65) is beaten


def test_group_mean_averages_seeds():
    rows = [{"v": "a", "acc": 0.5}, {"v": "a", "acc": 0.7}, {"v": "b", "acc": 0.9}, {"v": "b", "acc": None}]
    stats = group_mean(rows, ("v",), "acc")
    assert stats[("a",)][0] == pytest.approx(0.6) and stats[("a",)][2] == 2
    assert stats[("a",)][1] == pytest.approx(0.1414213, rel=1e-5)
    assert stats[("b",)] == (0.9, 0.0, 1)


def test_results_csv_keeps_every_column(tmp_path):
    write_csv([{"run": "a", "x": 1.0}, {"run": "b", "y": 2}], tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert rows == [{"run": "a", "x": "1", "y": ""}, {"run": "b", "x": "", "y": "2"}]


def tiny_study() -> Study:
    def grid(size):
        return [Run(f"run-{i}", fashion_mnist_run(overrides=TINY_VIT, steps=2, batch_size=32, seed=i,
                                                 train_split="train[:64]", eval_split="test[:64]"),
                    {"index": i}, fewshot=False) for i in range(2)]

    return Study("tiny", "tiny", "-", "-", grid, lambda rows, path: None, lambda rows: "", "")


def test_a_half_finished_study_resumes_without_rerunning_finished_runs(tmp_path, monkeypatch):
    study = tiny_study()
    first = study_runner.run_study(study, "quick", tmp_path, only="run-0", log=lambda m: None)
    assert [r["run"] for r in first] == ["run-0"]
    done_file = tmp_path / "runs" / "run-0" / study_runner.RESULT_FILE
    before = done_file.read_text()

    trained = []
    real = study_runner.train_and_measure
    monkeypatch.setattr(study_runner, "train_and_measure", lambda run, d: trained.append(run.name) or real(run, d))
    rows = study_runner.run_study(study, "quick", tmp_path, log=lambda m: None)
    assert trained == ["run-1"]
    assert done_file.read_text() == before
    assert [r["run"] for r in rows] == ["run-0", "run-1"]
    assert all(r["steps"] == 2 and r["images_seen"] == 64 for r in rows)

    trained.clear()  # all done: nothing runs again
    study_runner.run_study(study, "quick", tmp_path, log=lambda m: None)
    assert trained == []


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A run whose result is missing but whose run directory has a checkpoint continues from it."""
    study = tiny_study()
    run = study.runs("quick")[0]
    from vitlab.training import train

    cfg = validate(from_dict({**run.config, "run_dir": str(tmp_path / "runs" / run.name)}))
    cfg.train.steps = 1  # as if stopped after its first step
    train(cfg)
    rows = study_runner.run_study(study, "quick", tmp_path, only="run-0", log=lambda m: None)
    summary = json.loads((tmp_path / "runs" / "run-0" / "summary.json").read_text())
    assert summary["resumed_from"] == 1 and rows[0]["steps"] == 2


def test_quick_pooling_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "pooling"
    assert main(["study", "pooling", "--quick", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["pooling"], r["lr"]) for r in rows} == {("token", "0.001"), ("token", "0.003"), ("gap", "0.001"),
                                                        ("gap", "0.003")}
    assert all(0.0 <= float(r["test_top1"]) <= 1.0 and 0.0 <= float(r["fewshot5"]) <= 1.0 for r in rows)
    assert (out / "pooling.png").stat().st_size > 10_000
    report = (out / "REPORT.md").read_text()
    assert "Figure 9" in report and "vitlab study pooling --size quick" in report and "class token" in report


def test_bench_sweeps_image_sizes_with_the_largest_batch(capsys):
    assert main(["bench", "--model", "ViT-Ti/16", "--image-sizes", "32", "128", "--max-batch", "--memory-cap", "1",
                 "--batch-size", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["image_size"] for r in rows] == [32, 128]
    small, large = rows
    assert small["images_per_s"] > 0 and large["gflops_per_image"] > 10 * small["gflops_per_image"]
    # 65 tokens against 5: the activations of a 128 px image need several times the memory of a 32 px one
    assert 0 < small["mb_per_image"] < large["mb_per_image"], rows
    assert 0 < large["max_batch"] < small["max_batch"], rows
