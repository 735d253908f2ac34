"""`vitlab study`: the grids, the bookkeeping (resume, results, Pareto front), and one quick study end to end."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest

import tracking_support as tks
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

    study_runner.claim_run_dir(tmp_path, run, log=lambda m: None)  # as the runner starts a run
    cfg = validate(from_dict({**run.config, "run_dir": str(tmp_path / "runs" / run.name)}))
    cfg.train.steps = 1  # as if stopped after its first step
    train(cfg)
    rows = study_runner.run_study(study, "quick", tmp_path, only="run-0", log=lambda m: None)
    summary = json.loads((tmp_path / "runs" / "run-0" / "summary.json").read_text())
    assert summary["resumed_from"] == 1 and rows[0]["steps"] == 2


def test_quick_pooling_study_end_to_end(tmp_path, capsys):
    out = tmp_path / "pooling"
    assert main(["study", "pooling", "--quick", "--out", str(out), "--log", "tensorboard"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["pooling"], r["lr"]) for r in rows} == {("token", "0.001"), ("token", "0.003"), ("gap", "0.001"),
                                                        ("gap", "0.003")}
    assert all(0.0 <= float(r["test_top1"]) <= 1.0 and 0.0 <= float(r["fewshot5"]) <= 1.0 for r in rows)
    assert (out / "pooling.png").stat().st_size > 10_000
    report = (out / "REPORT.md").read_text()
    assert "Figure 9" in report and "vitlab study pooling --size quick" in report and "class token" in report
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == sorted(r["run"] for r in rows)
    for row in rows:  # every arm in one TensorBoard log dir, tagged with the study, its size and its axes
        events = tks.tensorboard_run(out / "tensorboard" / row["run"])
        tags = tks.tensorboard_hparams(events)
        assert (tags["study"], tags["size"], tags["pooling"]) == ("pooling", "quick", row["pooling"])
        assert tags["lr"] == pytest.approx(float(row["lr"]))
        tks.assert_same_series(tks.tensorboard_scalars(events), out / row["run_dir"])


def test_bench_sweeps_image_sizes_with_the_largest_batch(capsys):
    assert main(["bench", "--model", "ViT-Ti/16", "--image-sizes", "32", "128", "--largest-batch", "--memory-cap", "1",
                 "--batch-size", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["image_size"] for r in rows] == [32, 128]
    small, large = rows
    assert small["images_per_s"] > 0 and large["gflops_per_image"] > 10 * small["gflops_per_image"]
    # 65 tokens against 5: the activations of a 128 px image need several times the memory of a 32 px one
    assert 0 < small["mb_per_image"] < large["mb_per_image"], rows
    assert 0 < large["max_batch"] < small["max_batch"], rows


def test_a_throughput_run_is_measured_by_the_bench_harness(tmp_path, monkeypatch):
    """The study's points are vitlab.bench.size_point's: the runner passes a run's config to it unchanged."""
    import vitlab.bench

    run = next(r for r in get_study("throughput").runs("quick") if r.name.endswith("-1thread"))
    seen = []
    real = vitlab.bench.size_point
    monkeypatch.setattr(vitlab.bench, "size_point", lambda **config: seen.append(config) or real(**config))
    row = study_runner.execute(Run(run.name, {**run.config, "seconds": 0.01}, run.tags, kind="throughput",
                                   fewshot=False), tmp_path, log=lambda m: None)
    assert seen == [{**run.config, "seconds": 0.01}]
    assert row["images_per_s"] > 0 and row["threads"] == 1 and "max_batch" not in row


# ---- the runner keeps results honest ------------------------------------------------------------------------
def tiny_study_with(steps: int, name: str = "tiny", runs: int = 1) -> Study:
    def grid(size):
        return [Run(f"run-{i}", fashion_mnist_run(overrides=TINY_VIT, steps=steps, batch_size=32, seed=i,
                                                  train_split="train[:64]", eval_split="test[:64]"),
                    {"index": i, "study": name}, fewshot=False) for i in range(runs)]

    return Study(name, name, "-", "-", grid, lambda rows, path: None, lambda rows: "", "")


def test_a_changed_grid_trains_again_and_keeps_the_old_run_aside(tmp_path):
    out = tmp_path / "study"
    first = study_runner.run_study(tiny_study_with(2), "quick", out, log=lambda m: None)
    assert first[0]["steps"] == 2
    messages = []
    second = study_runner.run_study(tiny_study_with(3), "quick", out, log=messages.append)
    assert second[0]["steps"] == 3 and second[0]["config_hash"] != first[0]["config_hash"]
    assert any("configuration changed" in m for m in messages)
    assert len(list((out / "runs" / ".replaced").iterdir())) == 1  # the 2-step run is kept, not resumed


def test_an_unfinished_run_of_another_configuration_is_not_resumed(tmp_path):
    out = tmp_path / "study"
    study = tiny_study_with(4)
    run = study.runs("quick")[0]
    from vitlab.training import train

    other = tiny_study_with(2).runs("quick")[0]
    study_runner.claim_run_dir(out, other, log=lambda m: None)  # started with 2 steps, stopped before its result
    train(validate(from_dict({**other.config, "run_dir": str(out / "runs" / "run-0")})))
    rows = study_runner.run_study(study, "quick", out, log=lambda m: None)
    summary = json.loads((out / "runs" / "run-0" / "summary.json").read_text())
    assert rows[0]["steps"] == 4 and summary["resumed_from"] is None
    assert run.name == "run-0"


def test_the_hash_ignores_bookkeeping_and_new_defaults_but_not_what_is_learned():
    run = tiny_study_with(2).runs("quick")[0]
    same = Run(run.name, json.loads(json.dumps(run.config)), {"other": "tags"}, fewshot=False)
    same.config["train"]["log_every"] = 7  # how often it logs is not what it learns
    same.config["optim"]["decay_all"] = False  # a setting written out at its default
    assert study_runner.config_hash(same) == study_runner.config_hash(run)
    changed = Run(run.name, json.loads(json.dumps(run.config)), run.tags, fewshot=False)
    changed.config["optim"]["lr"] = 3e-3
    assert study_runner.config_hash(changed) != study_runner.config_hash(run)
    assert study_runner.config_hash(Run(run.name, run.config, run.tags, fewshot=True)) != study_runner.config_hash(run)


def test_every_run_of_every_study_keeps_its_configuration_hash():
    """The hashes key the results studies have already trained (and the cache shared between studies): a change
    to how the runs' configs are built must leave each one as it was, or finished runs would train again. (A
    change meant to retrain records them anew: python tests/study_hashes.py > tests/fixtures/study_hashes.json)"""
    from study_hashes import all_hashes

    recorded = json.loads((Path(__file__).parent / "fixtures" / "study_hashes.json").read_text())
    assert all_hashes() == recorded


def test_study_runs_start_from_the_main_jobs_base_recipe():
    from vitlab.recipes import FOLDER
    from vitlab.training.config import read_file

    base = read_file(FOLDER / "base" / "fashion-mnist.toml")
    run = fashion_mnist_run(lr=2e-3)
    assert run["optim"] == {**base["optim"], "lr": 2e-3} and run["loss"] == base["loss"]
    assert all(run["data"][k] == base["data"][k] for k in ("in_chans", "inception_crop", "flip"))
    assert run["train"]["clip_grad_norm"] == base["train"]["clip_grad_norm"]
    assert run["train"]["precision"] == "fp32" != base["train"]["precision"]  # the study's own, on every CPU


def test_a_configuration_another_study_trained_is_reused_from_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    study_runner.run_study(tiny_study_with(2, "one"), "quick", tmp_path / "one", cache=cache, log=lambda m: None)
    trained = []
    real = study_runner.train_and_measure
    monkeypatch.setattr(study_runner, "train_and_measure", lambda run, d: trained.append(run.name) or real(run, d))
    messages = []
    rows = study_runner.run_study(tiny_study_with(2, "two"), "quick", tmp_path / "two", cache=cache,
                                  log=messages.append)
    assert trained == [] and any("reused" in m for m in messages)
    assert (tmp_path / "two" / rows[0]["run_dir"]).resolve() == (tmp_path / "one" / "runs" / "run-0").resolve()
    assert rows[0]["reused_from"] == "../one/runs/run-0"  # no folder of this machine in the results
    study_runner.export_results(rows, tmp_path / "two", tmp_path / "committed")
    exported = json.loads((tmp_path / "committed" / "run-0" / "study_result.json").read_text())
    assert exported["study"] == "two" and exported["run_dir"] == "runs/run-0"  # study two's result, not one's
    assert not any(str(tmp_path) in f.read_text() for f in (tmp_path / "committed" / "run-0").iterdir())
    study_runner.run_study(tiny_study_with(3, "two"), "quick", tmp_path / "two", cache=cache, log=lambda m: None)
    assert trained == ["run-0"]  # another configuration: nothing to reuse


def test_exported_results_are_taken_on_another_machine_and_only_the_rest_trains(tmp_path, monkeypatch):
    study_runner.run_study(tiny_study_with(2, runs=2), "quick", tmp_path / "first", log=lambda m: None)
    rows, _ = study_runner.finished_rows(tiny_study_with(2, runs=2), "quick", tmp_path / "first")
    exported = tmp_path / "committed"
    assert study_runner.export_results(rows[:1], tmp_path / "first", exported) == 1  # one run committed so far
    assert sorted(p.name for p in (exported / "run-0").iterdir()) == sorted(study_runner.KEPT_FILES)
    assert not any(str(tmp_path) in p.read_text() for p in (exported / "run-0").iterdir())  # no machine paths
    trained = []
    real = study_runner.train_and_measure
    monkeypatch.setattr(study_runner, "train_and_measure", lambda run, d: trained.append(run.name) or real(run, d))
    messages = []
    again = study_runner.run_study(tiny_study_with(2, runs=2), "quick", tmp_path / "second", known=exported,
                                   log=messages.append, cache=None)
    assert trained == ["run-1"] and any("taken from" in m for m in messages)
    assert again[0]["test_top1"] == rows[0]["test_top1"]
    assert (tmp_path / "second" / "runs" / "run-0" / "metrics.jsonl").is_file()  # curves can still be drawn
    other = study_runner.run_study(tiny_study_with(3, runs=2), "quick", tmp_path / "third", known=exported, cache=None,
                                   log=lambda m: None)
    assert trained[1:] == ["run-0", "run-1"] and len(other) == 2  # another configuration: nothing taken


def test_wall_time_sums_over_the_sessions_of_a_resumed_run(tmp_path):
    study = tiny_study_with(3)
    run = study.runs("quick")[0]
    from vitlab.training import train

    study_runner.claim_run_dir(tmp_path, run, log=lambda m: None)
    cfg = validate(from_dict({**run.config, "run_dir": str(tmp_path / "runs" / run.name)}))
    cfg.train.steps = 3
    cfg.train.max_minutes = 1e-9  # stopped by its budget after one step: a first session
    first = train(cfg)
    rows = study_runner.run_study(study, "quick", tmp_path, log=lambda m: None)
    summary = json.loads((tmp_path / "runs" / run.name / "summary.json").read_text())
    assert first.steps < 3 and summary["resumed_from"] == first.steps
    assert summary["train_time_s"] > summary["wall_time_s"]
    assert rows[0]["study_wall_s"] >= summary["train_time_s"]


def test_sweeps_are_extended_past_an_edge_until_the_best_rate_is_inside():
    from vitlab.studies.core import rates_beyond_edges

    rows = [{"arm": "a", "lr": lr, "val_top1": acc} for lr, acc in ((1e-3, 0.5), (3e-3, 0.6), (1e-2, 0.7))]
    rows += [{"arm": "b", "lr": lr, "val_top1": acc} for lr, acc in ((1e-3, 0.7), (3e-3, 0.6), (1e-2, 0.5))]
    rows += [{"arm": "c", "lr": lr, "val_top1": acc} for lr, acc in ((1e-3, 0.5), (3e-3, 0.7), (1e-2, 0.6))]
    assert rates_beyond_edges(rows, "arm") == {"a": 0.033, "b": 0.00033}


def sweep_study() -> Study:
    """One arm whose highest rate always wins: its sweep is extended MAX_EXTENSIONS times."""
    def run_at(lr):
        return Run(f"lr{lr:g}", fashion_mnist_run(overrides=TINY_VIT, steps=1, batch_size=32, lr=lr,
                                                 train_split="train[:32]", eval_split="test[:32]"),
                   {"arm": "a", "lr": lr}, fewshot=False)

    def extend(size, rows):  # pretend the highest rate always wins: extended MAX_EXTENSIONS times, no more
        from vitlab.studies.core import rates_beyond_edges

        return [run_at(lr) for lr in rates_beyond_edges([dict(r, val_top1=r["lr"]) for r in rows], "arm").values()]

    return Study("sweep", "sweep", "-", "-", lambda size: [run_at(1e-4), run_at(3e-4)], lambda rows, path: None,
                 lambda rows: "", "", extend=extend)


def test_the_runner_runs_the_extensions_a_study_asks_for(tmp_path):
    rows = study_runner.run_study(sweep_study(), "quick", tmp_path, log=lambda m: None)
    assert len(rows) == 2 + study_runner.MAX_EXTENSIONS
    assert max(r["lr"] for r in rows) > 3e-4 * 2 ** study_runner.MAX_EXTENSIONS


def test_exported_extensions_are_taken_too_and_nothing_trains_again(tmp_path, monkeypatch):
    study = sweep_study()
    rows = study_runner.run_study(study, "quick", tmp_path / "first", log=lambda m: None)
    study_runner.export_results(rows, tmp_path / "first", tmp_path / "committed")
    trained = []
    monkeypatch.setattr(study_runner, "train_and_measure", lambda run, d: trained.append(run.name))
    again = study_runner.run_study(study, "quick", tmp_path / "second", known=tmp_path / "committed", cache=None,
                                   log=lambda m: None)
    assert trained == [] and [r["run"] for r in again] == [r["run"] for r in rows]


def test_verdicts_call_a_difference_inside_the_seed_range_a_tie():
    from vitlab.studies.report import Spread, seed_noise, verdict_better, verdict_tie

    a, b = Spread(0.80, 0.79, 0.81, 2), Spread(0.795, 0.79, 0.80, 2)
    c = Spread(0.70, 0.69, 0.71, 2)
    noise = seed_noise([a, b, c])
    assert noise == pytest.approx(0.02)
    assert verdict_better(a, b, noise) == "tie within noise"
    assert verdict_better(a, c, noise) == "reproduced" and verdict_better(c, a, noise) == "not reproduced"
    assert verdict_tie(a, b, noise).startswith("reproduced") and verdict_tie(a, c, noise) == "not reproduced"
    wide = Spread(0.75, 0.65, 0.85, 2)  # by default each pair is judged by its own seed ranges, not a third arm's
    assert verdict_better(a, c) == "reproduced" and verdict_better(a, c, seed_noise([a, c, wide])) == "tie within noise"
    assert verdict_better(a, Spread(0.7, 0.7, 0.7, 1), seed_noise([Spread(0.7, 0.7, 0.7, 1)])).startswith("no seed")


# ---- the command: --estimate, --report, --jobs --------------------------------------------------------------
def test_estimate_prints_a_time_per_run_and_in_all(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    assert main(["study", "pooling", "--quick", "--estimate", "--jobs", "2", "--out", str(tmp_path / "p")]) == 0
    assert torch.get_num_threads() == threads  # the probe's thread setting does not outlive it
    out = capsys.readouterr().out.splitlines()
    runs = get_study("pooling").runs("quick")
    for run in runs:
        line = next(line for line in out if line.startswith(run.name))
        assert float(line.split()[-1]) > 0  # minutes
    assert any(line.startswith("in all:") and f"for {len(runs)} runs" in line for line in out)
    assert not (tmp_path / "p").exists()  # nothing trained, nothing written


def test_report_on_a_half_finished_study(tmp_path, capsys):
    out = tmp_path / "pooling"
    first = get_study("pooling").runs("quick")[0]
    assert main(["study", "pooling", "--quick", "--out", str(out), "--only", first.name]) == 0
    assert main(["study", "pooling", "--quick", "--out", str(out), "--report"]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["run"] for r in rows] == [first.name]
    report = (out / "REPORT.md").read_text()
    runs = len(get_study("pooling").runs("quick"))
    assert f"1 of {runs} runs finished so far" in report and (out / "pooling.png").is_file()


def test_report_with_nothing_finished_is_one_line(tmp_path, capsys):
    assert main(["study", "pooling", "--quick", "--out", str(tmp_path / "none"), "--report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run" in err[0]


def test_jobs_split_the_cpus_of_the_affinity_and_warn_when_oversubscribed(monkeypatch):
    monkeypatch.setattr(study_runner, "usable_cpus", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert study_runner.threads_per_job(1) == 2 and study_runner.threads_per_job(2) == 1
    with pytest.warns(UserWarning, match="more than the 2 CPUs"):
        assert study_runner.threads_per_job(3) == 1


def test_a_gpu_is_never_handed_to_two_runs_at_once():
    slots = study_runner.GpuSlots(2)
    a, b = slots.take(), slots.take()
    assert {a, b} == {0, 1} and slots.take() is None
    slots.give_back(a)
    assert slots.take() == a and slots.take() is None


def test_runs_start_longest_first():
    runs = get_study("dimensions").runs("default")
    order = sorted(runs, key=study_runner.run_cost, reverse=True)
    assert order[0].name in ("patch_size-2", "depth-8", "width-128") and order[-1].name == "patch_size-7"


def test_sigterm_to_the_study_stops_its_child_runs(tmp_path):
    """`--jobs 2`: the parent passes SIGTERM on; no child is left training (and holding its run's lock)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "pooling"
    env = {**os.environ, "PYTHONPATH": str(Path(study_runner.__file__).parents[2])}
    parent = subprocess.Popen([sys.executable, "-m", "vitlab", "study", "pooling", "--quick", "--jobs", "2", "--out",
                               str(out), "--no-cache"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(children_of(out)) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
    assert len(children_of(out)) == 2, "the study did not start two child runs"
    logs = [out / "runs" / run.name / "study.log" for run in get_study("pooling").runs("quick")[:2]]
    while not all(p.is_file() and p.stat().st_size for p in logs) and time.monotonic() < deadline:
        time.sleep(0.2)  # the children have started training and printing into their run directories
    assert all(p.is_file() and p.stat().st_size for p in logs)
    assert not (out / "runs" / ".replaced").exists()  # a child's own log is no reason to move its run aside
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=120) != 0
    deadline = time.monotonic() + 30
    while children_of(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert children_of(out) == []


def children_of(out) -> list[int]:
    """Pids of `vitlab study ... --only RUN` processes writing into `out`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--only" in cmdline and str(out).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def test_the_index_gathers_every_studys_verdicts(tmp_path, capsys):
    folder = tmp_path / "docs"
    (folder / "pooling").mkdir(parents=True)
    rows = [{"run": f"{p}-{lr}-{s}", "pooling": p, "lr": lr, "seed": s, "val_top1": acc, "test_top1": acc}
            for p, lr, s, acc in (("token", 1e-3, 0, 0.80), ("token", 1e-3, 1, 0.81), ("token", 3e-3, 0, 0.70),
                                  ("token", 3e-3, 1, 0.70), ("gap", 3e-4, 0, 0.805), ("gap", 3e-4, 1, 0.80),
                                  ("gap", 1e-3, 0, 0.78), ("gap", 1e-3, 1, 0.78))]
    (folder / "pooling" / "results.json").write_text(json.dumps(rows))
    (folder / "README.md").write_text("# Studies\n\nintro\n")
    assert main(["study", "--index", str(folder)]) == 0
    text = (folder / "README.md").read_text()
    assert text.startswith("# Studies\n\nintro\n")
    assert "**reproduced (tie within noise)**" in text and "GAP needs a lower learning rate" in text
    assert "GAP - token by rate (test, points): 0.001 -2.50 |" in text  # only the rate both tried
    assert "| scaling | Figure 5 (Section 4.4) | not run at the default size yet | - |" in text
    assert main(["study", "--index", str(folder)]) == 0  # written again in place, not appended
    assert (folder / "README.md").read_text() == text


def test_a_run_measured_the_old_way_is_measured_again_without_training_again(tmp_path, monkeypatch):
    study = tiny_study_with(2)
    first = study_runner.run_study(study, "quick", tmp_path, log=lambda m: None)
    result_file = tmp_path / "runs" / "run-0" / study_runner.RESULT_FILE
    old = {**first[0], "measurement": study_runner.MEASUREMENT_VERSION - 1, "test_top1": -1.0}
    result_file.write_text(json.dumps(old))
    trained = []
    import vitlab.training

    real = vitlab.training.train
    monkeypatch.setattr(vitlab.training, "train", lambda cfg: trained.append(real(cfg)) or trained[-1])
    rows = study_runner.run_study(study, "quick", tmp_path, log=lambda m: None)
    assert rows[0]["test_top1"] == first[0]["test_top1"] and rows[0]["measurement"] == study_runner.MEASUREMENT_VERSION
    assert len(trained) == 1 and trained[0].resumed_from == 2  # the finished run: nothing trained again
    assert not (tmp_path / "runs" / ".replaced").exists()


def test_a_summary_of_either_spelling_gives_the_runs_metric():
    from vitlab.studies.measure import last_metric

    assert last_metric({"last_metric": 0.7}) == 0.7 and last_metric({"last_accuracy": 0.6}) == 0.6  # an older run


def test_throughput_findings_pair_each_resnet_with_the_vit_of_similar_speed_and_of_similar_compute():
    from vitlab.studies.throughput import findings

    def row(model, family, speed, gflops, batch):
        return {"run": model, "model": model, "family": family, "image_size": 224, "images_per_s": speed,
                "gflops_per_image": gflops, "max_batch": batch}
    rows = [row("ViT-B/16", "ViT", 1.7, 35.1, 442), row("ViT-B/32", "ViT", 6.5, 8.8, 2884),
            row("BiT-R50x1", "BiT", 6.5, 8.2, 419)]
    memory, speed = findings(rows)
    assert memory.ours.startswith("ViT-B/32 2,884") and memory.verdict == "reproduced"  # not B/16, 4x slower
    assert "ViT-B/32 (8.8 GFLOPs) 1.00x" in speed.ours and speed.verdict == "reproduced"
    rows[1]["max_batch"], rows[1]["images_per_s"] = 400, 3.0  # the speed-matched ViT now fits fewer, runs slower
    memory, speed = findings(rows)
    assert memory.verdict == "not reproduced" and speed.verdict == "not reproduced"


def test_data_efficiency_judges_each_small_data_fix_against_the_vit_within_the_seed_spread():
    from vitlab.studies.data_efficiency import findings

    def rows(family, subset, accuracies):
        return [{"family": family, "subset": subset, "seed": s, "test_top1": a} for s, a in enumerate(accuracies)]
    data = (rows("ViT", 1000, [0.70, 0.71, 0.72]) + rows("BiT", 1000, [0.80, 0.81, 0.80])
            + rows("ViT", 3000, [0.80, 0.80, 0.81]) + rows("ViT", 54000, [0.88]) + rows("BiT", 54000, [0.89])
            + rows("ViT+SPT", 1000, [0.75, 0.76, 0.75]) + rows("ViT+SPT", 3000, [0.801, 0.80, 0.80])
            + rows("ViT+SPT", 54000, [0.95])  # one seed: no verdict on that subset
            + rows("ViT+LSA", 1000, [0.71, 0.72, 0.70]) + rows("ViT+LSA", 3000, [0.78, 0.78, 0.78]))
    found = {f.claim.split(":")[1].split(" lifts")[0].strip(): f for f in findings(data) if f.claim.startswith("Lee")}
    spt = found["shifted patch tokenization"]
    assert spt.verdict == "reproduced on 1 of 2 subsets"  # 4.3 points against a 2-point range; then a tie
    assert spt.ours == "ViT+SPT - ViT, points, by training images: 1,000: +4.33 (seed range 2.00); 3,000: -0.30 (seed range 1.00)"
    assert found["locality self-attention"].verdict == "not reproduced on 1 of 2 subsets"  # a tie, then -2.33 > 1
    assert "SPT and LSA together" not in found  # no runs of that arm yet: no finding
    half_done = rows("ViT", 1000, [0.70, 0.71]) + rows("ViT", 54000, [0.88]) + rows("BiT", 54000, [0.89])
    assert findings(half_done) == []  # the ResNet on one subset so far: nothing to compare yet, no crash


def test_posemb_judges_each_finding_by_the_seed_range_of_its_own_arms():
    from vitlab.studies.posemb import findings

    def rows(posemb, accuracies, task="fashion_mnist"):
        return [{"task": task, "posemb": posemb, "seed": s, "test_top1": a} for s, a in enumerate(accuracies)]
    data = (rows("none", [0.760, 0.765]) + rows("learned_1d", [0.810, 0.811]) + rows("learned_2d", [0.800, 0.801])
            + rows("relative", [0.802, 0.803])
            + rows("sincos_2d", [0.80, 0.86]))  # a wide spread in an arm that no finding compares
    verdicts = {f.claim: f.verdict for f in findings(data)}
    # 1 point between 1-D and 2-D against their 0.1-point range: a difference, whatever sin-cos's range is
    assert verdicts["1-D, 2-D and relative embeddings perform about the same"] == "not reproduced"
    assert verdicts["Any position embedding is better than none (Fashion-MNIST)"] == "reproduced"


def test_posemb_trains_the_learned_embeddings_furthest_apart_longer_when_they_do_not_tie(tmp_path):
    from vitlab.studies.posemb import LONGER_TASK, STUDY

    def rows(accuracies, task="fashion_mnist"):
        return [{"run": f"{task}-{v}-s{s}", "task": task, "posemb": v, "seed": s, "test_top1": a + 0.001 * s,
                 "fewshot5": a - 0.05, "run_dir": f"runs/{v}-s{s}"} for v, a in accuracies.items() for s in (0, 1)]
    apart = rows({"none": 0.76, "learned_1d": 0.81, "learned_2d": 0.80, "relative": 0.805, "sincos_2d": 0.83})
    longer = STUDY.extend("default", apart)
    assert [r.tags["posemb"] for r in longer] == ["learned_1d", "learned_2d"]
    assert all(r.tags["task"] == LONGER_TASK and r.tags["seed"] == 0 for r in longer)
    assert longer[0].config["train"]["steps"] == 3 * STUDY.runs("default")[0].config["train"]["steps"]
    tied = rows({"none": 0.76, "learned_1d": 0.8005, "learned_2d": 0.80, "relative": 0.8003, "sincos_2d": 0.83})
    assert STUDY.extend("default", tied) == [] and STUDY.extend("quick", apart) == []

    # trained longer, 1-D and 2-D come within the 0.1-point seed range: the gap was a head start
    done = apart + [{"run": r.name, **r.tags, "test_top1": a, "run_dir": f"runs/{r.name}"}
                    for r, a in zip(longer, (0.8500, 0.8495))]
    verdicts = {f.claim: (f.ours, f.verdict) for f in STUDY.findings(done)}
    ours, verdict = verdicts["... the two furthest apart, trained 3x longer (6 epochs, seed 0)"]
    assert verdict == "reproduced (tie within noise)" and "+0.05 points (after 2 epochs +1.00)" in ours
    assert "fashion_mnist, 3x epochs test top-1 %" in STUDY.summarise(done)
    STUDY.draw(done, tmp_path / "posemb.png")
    assert (tmp_path / "posemb.png").stat().st_size > 10_000


def test_axial_judges_accuracy_by_the_seed_range_and_cost_by_counted_flops():
    from vitlab.studies.axial import findings

    def rows(family, accuracies, gflops):
        return [{"family": family, "patch_size": 4, "seed": s, "test_top1": a, "gflops_per_image": gflops,
                 "images_per_s": 300.0 / gflops} for s, a in enumerate(accuracies)]
    data = rows("ViT", [0.78, 0.79], 0.02) + rows("AxialViT", [0.83, 0.835], 0.04) + rows("ViT-deep", [0.82, 0.84], 0.04)
    verdicts = [(f.claim, f.ours, f.verdict) for f in findings(data)]
    assert [v[2] for v in verdicts] == ["reproduced", "reproduced", "tie within noise"]
    assert verdicts[1][0] == "... at the cost of more compute (patch 4)" and "(2.00x)" in verdicts[1][1]


def test_scaling_judges_its_readings_by_the_seed_range_of_the_largest_models(tmp_path):
    from vitlab.studies.scaling import STUDY, findings, grid, summarise

    seeded = [r.name for r in grid("default") if r.tags["seed"] == 1]
    assert seeded == ["vit-2-s1", "bit-2-s1", "hybrid-2-s1"]  # each family's largest model, twice

    def rows(family, accuracies, seeds_of_largest=(0.0, 0.0)):
        out = [{"run": f"{family.lower()}-{i}-s0", "family": family, "size": i, "seed": 0, "params": 1000 * (i + 1),
                "gflops_per_image": 0.01 * (i + 1), "train_pflops": 0.1 * (i + 1) * (2 if family == "BiT" else 1),
                "test_top1": a, "fewshot5": a - 0.05} for i, a in enumerate(accuracies)]
        return out + [{**out[-1], "run": f"{family.lower()}-2-s1", "seed": 1,
                       "test_top1": accuracies[-1] + seeds_of_largest[1]}]

    # the ViT's best is 0.4 points above BiT's best, inside the 1-point seed range of the largest ViT: a tie
    data = rows("ViT", [0.80, 0.83, 0.850], (0, 0.010)) + rows("BiT", [0.81, 0.84, 0.851]) \
        + rows("Hybrid", [0.83, 0.84, 0.852])
    verdicts = {f.claim: (f.ours, f.verdict) for f in findings(data)}
    top = verdicts["ViT (or the hybrid) gives the best accuracy for a given training compute at the top end"]
    assert top[1] == "tie within noise" and "seed range 1.00" in top[0]
    assert verdicts["The hybrid beats the ViT at the smallest size"][1] == "reproduced"  # 3 points > 1
    assert verdicts["... and the difference vanishes at the largest"][1].startswith("reproduced")
    clear = rows("ViT", [0.80, 0.83, 0.88], (0, 0.002)) + rows("BiT", [0.81, 0.84, 0.85])
    assert findings(clear)[0].verdict == "reproduced"
    table = summarise(data)
    assert "| vit-2 |" in table and "85.50 ±0.50 (n=2)" in table and "vit-2-s1" not in table  # seeds averaged
    STUDY.draw(data, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    assert STUDY.extend("default", data) == []  # a tie: nothing to retry


def test_scaling_trains_the_arms_of_a_finding_not_reproduced_longer(tmp_path):
    from vitlab.studies.scaling import FRONT, STUDY, VANISH

    def row(family, size, accuracy, seed=0, **tags):
        return {"run": f"{family.lower()}-{size}-s{seed}", "family": family, "size": size, "seed": seed,
                "params": 1000, "gflops_per_image": 0.01, "train_pflops": 0.1 * (size + 1), "test_top1": accuracy,
                "fewshot5": accuracy - 0.05, **tags}

    def family(name, accuracies):  # three sizes, the largest with a second seed 0.4 points apart
        return [row(name, i, a) for i, a in enumerate(accuracies)] + [row(name, 2, accuracies[-1] - 0.004, seed=1)]
    # BiT leads the front, and the hybrid stays 3.8 points ahead of the ViT at the largest: both retried
    rows = family("ViT", [0.79, 0.81, 0.819]) + family("BiT", [0.86, 0.88, 0.878]) \
        + family("Hybrid", [0.84, 0.85, 0.857])
    longer = STUDY.extend("default", rows)
    assert [r.name for r in longer] == ["hybrid-2-x3", "bit-1-x3", "vit-2-x3"]
    assert longer[2].tags["epochs"] == 4.5 and longer[2].config["train"]["steps"] == 1899  # of 54,000 at 128
    assert STUDY.extend("quick", rows) == []
    done = rows + [{**row(f, size, a, epochs=4.5), "run": f"{f.lower()}-{size}-x3"}
                   for f, size, a in (("Hybrid", 2, 0.87), ("BiT", 1, 0.89), ("ViT", 2, 0.868))]
    verdicts = {f.claim: (f.ours, f.verdict) for f in STUDY.findings(done)}
    assert verdicts[FRONT][1] == "not reproduced" and verdicts[VANISH][1] == "not reproduced"  # after 1.5 epochs
    ours, verdict = verdicts["... the best transformer against the best BiT, trained 3x longer (4.5 epochs, seed 0)"]
    assert verdict == "not reproduced" and "hybrid-2-x3 87.00 (0.300 PFLOPs), bit-1-x3 89.00" in ours
    ours, verdict = verdicts["... the largest hybrid against the largest ViT, trained 3x longer (4.5 epochs, seed 0)"]
    assert verdict.startswith("reproduced") and "+0.20 points; seed range 0.40" in ours
    assert "81.70 ±0.20 (n=2)" in STUDY.summarise(done)  # the longer runs are kept out of the seeds
    assert "| vit-2-x3 | 0.300 | 86.80 | 81.70 ±0.20 (n=2) |" in STUDY.summarise(done)
    STUDY.draw(done, tmp_path / "scaling.png")


def test_optimizers_trains_the_arms_of_a_claim_not_reproduced_longer_at_their_best_rates(tmp_path):
    from vitlab.studies.optimizers import ARMS, STUDY

    def row(arm, lr, accuracy, seed=0, **tags):
        return {"run": f"{arm}-{lr}-s{seed}", "family": ARMS[arm][0], "optimizer": arm, "lr": lr, "seed": seed,
                "val_top1": accuracy, "test_top1": accuracy, "run_dir": "runs/none", **tags}

    def sweep(arm, accuracies, second_seed):  # the middle rate best, a second seed there
        lrs = ARMS[arm][3]
        return [row(arm, lr, a) for lr, a in zip(lrs, accuracies)] + [row(arm, lrs[1], second_seed, seed=1)]
    rows = (sweep("ViT adam", [0.80, 0.82, 0.81], 0.824) + sweep("ViT momentum", [0.76, 0.78, 0.77], 0.784)
            + sweep("ViT sgd", [0.76, 0.78, 0.77], 0.776) + sweep("BiT adam", [0.86, 0.88, 0.87], 0.882)
            + sweep("BiT momentum", [0.87, 0.89, 0.88], 0.894))  # momentum beats Adam for the ResNet
    longer = [r for r in STUDY.extend("default", rows) if "epochs" in r.tags]  # the rest: the seeds already run
    assert [r.name for r in longer] == ["bit-adam-lr0.003-x3", "bit-momentum-lr0.1-x3"]
    assert longer[0].tags["epochs"] == 4.5 and longer[0].config["train"]["steps"] == 1899
    done = rows + [row("BiT adam", 0.003, 0.90, epochs=4.5), row("BiT momentum", 0.1, 0.899, epochs=4.5)]
    assert [r.name for r in STUDY.extend("default", done) if "epochs" in r.tags] == [r.name for r in longer]
    verdicts = [(f.claim, f.ours, f.verdict) for f in STUDY.findings(done)]
    assert verdicts[0][2] == "not reproduced" and verdicts[1][0].startswith("... trained 3x longer (4.5 epochs")
    assert verdicts[1][2] == "tie within noise" and "BiT adam 90.00, BiT momentum 89.90: +0.10 points" in verdicts[1][1]
    assert [v[2] for v in verdicts[2:]] == ["reproduced", "reproduced"]  # no longer runs for the ViT's claims
    summary = STUDY.summarise(done)
    assert "| BiT adam | 0.003 | 90.00 | 88.10 ±0.10 (n=2) |" in summary
    assert "| BiT adam | 0.001: 86.00, 0.003: 88.00, 0.01: 87.00 | 0.003 | 88.10 ±0.10 (n=2) |" in summary
    STUDY.draw(done, tmp_path / "optimizers.png")


def test_posemb_figure_shows_a_fixed_table_whose_checkpoint_is_not_kept(tmp_path):
    """Runs taken from exported results have no checkpoint: the sin-cos table is the same untrained, a learned one
    is not, and is named as not kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlab.studies.posemb import STUDY
    from vitlab.studies.posemb_figure import similarity_panels
    from vitlab.training.config import to_yaml

    rows = []
    for run in STUDY.runs("quick"):
        if run.tags["task"] == "fashion_mnist" and run.tags["posemb"] in ("sincos_2d", "learned_1d"):
            (tmp_path / "runs" / run.name).mkdir(parents=True)
            cfg = validate(from_dict({**run.config, "run_dir": str(tmp_path / "runs" / run.name)}))
            (tmp_path / "runs" / run.name / "config.yaml").write_text(to_yaml(cfg))
            rows.append({"run": run.name, **run.tags, "run_dir": f"runs/{run.name}"})
    fig = plt.figure()
    similarity_panels(fig, rows, ["learned_1d", "sincos_2d"], out_dir=tmp_path)
    titles = [ax.get_title() for ax in fig.axes]
    notes = [t.get_text() for t in fig.texts]
    plt.close(fig)
    assert titles[0].startswith("sincos_2d:") and notes == ["checkpoint not kept: learned_1d"]


def test_dimensions_reads_its_rows_whose_tag_is_called_value(tmp_path):
    from vitlab.studies.dimensions import SCALES, STUDY

    def row(dimension, value, accuracy, seed=0):
        return {"run": f"{dimension}-{value}-s{seed}", "dimension": dimension, "value": value, "seed": seed,
                "params": 1000, "train_pflops": 0.002, "test_top1": accuracy, "fewshot5": accuracy - 0.05}
    rows = [row("base", "-", 0.800), row("base", "-", 0.804, seed=1),
            row("depth", max(SCALES["depth"]), 0.830), row("width", max(SCALES["width"]), 0.802),
            row("patch_size", min(SCALES["patch_size"]), 0.803)]
    verdicts = {f.claim: f.verdict for f in STUDY.findings(rows)}
    assert verdicts["Scaling depth helps more than scaling width"] == "reproduced"  # 2.8 points against 0.4
    assert verdicts["Smaller patches (longer sequences) help"] == "tie within noise"  # 0.1 points against 0.4
    assert "80.20 ±0.20 (n=2)" in STUDY.summarise(rows)
    STUDY.draw(rows, tmp_path / "dimensions.png")


def test_dimensions_trains_the_arms_of_a_finding_not_reproduced_longer(tmp_path):
    from vitlab.studies.dimensions import STUDY

    def row(dimension, value, accuracy, seed=0, **tags):
        return {"run": f"{dimension}-{value}-s{seed}", "dimension": dimension, "value": value, "seed": seed,
                "params": 1000, "train_pflops": 0.002, "test_top1": accuracy, "fewshot5": accuracy - 0.05, **tags}
    rows = [row("base", 0, 0.800), row("base", 0, 0.802, seed=1), row("depth", 8, 0.810), row("width", 128, 0.830),
            row("patch_size", 2, 0.830), row("patch_size", 7, 0.790)]  # width wins: depth against width is retried
    longer = STUDY.extend("default", rows)
    assert [r.name for r in longer] == ["depth-8-x3", "width-128-x3"]
    assert longer[0].config["model"]["overrides"]["depth"] == 8 and longer[0].tags["epochs"] == 6
    assert STUDY.extend("quick", rows) == []
    done = rows + [row("depth", 8, 0.850, epochs=6), row("width", 128, 0.840, epochs=6)]
    verdicts = {f.claim: (f.ours, f.verdict) for f in STUDY.findings(done)}
    assert verdicts["Scaling depth helps more than scaling width"][1] == "not reproduced"  # judged after 2 epochs
    ours, verdict = verdicts["... scaling depth helps more than scaling width: trained 3x longer (6 epochs, seed 0)"]
    assert verdict == "reproduced" and "depth 8 85.00, width 128 84.00: +1.00 points" in ours
    assert "80.10 ±0.10 (n=2)" in STUDY.summarise(done)  # the longer runs are kept out of the base's seeds
    assert "| depth 8 | 0.002 | 85.00 | 81.00 (n=1) |" in STUDY.summarise(done)
    STUDY.draw(done, tmp_path / "dimensions.png")


@pytest.mark.parametrize("name", sorted(EXPECTED - {"throughput"}))
def test_every_default_report_is_written_from_rows_shaped_like_its_grid(name, tmp_path):
    """The report, figure and verdicts of a study at the default size, from made-up results of every run of its
    grid: a crash here would otherwise first show after hours of training."""
    import random

    from vitlab.studies.report import write_report

    study, rng = get_study(name), random.Random(0)
    rows = [{"run": run.name, **run.tags, "val_top1": rng.uniform(0.6, 0.9), "test_top1": rng.uniform(0.6, 0.9),
             "fewshot5": rng.uniform(0.5, 0.8), "params": rng.randrange(10**5, 10**6),
             "gflops_per_image": rng.uniform(0.01, 0.1), "steps": 100, "images_seen": 12_800,
             "train_pflops": rng.uniform(1e-3, 1e-2), "train_time_s": 60.0, "images_per_s": 200.0,
             "study_wall_s": 61.0, "run_dir": f"runs/{run.name}"} for run in study.runs("default")]
    for part in (rows[:1], rows[::3], rows[len(rows) // 2:]):  # --report while the study is part-way
        write_report(study, "default", part, tmp_path, command=f"vitlab study {name}", planned=len(rows))
    report = write_report(study, "default", rows, tmp_path, command=f"vitlab study {name}").read_text()
    assert "## Verdict" in report and "| not run |" not in report  # every finding judged
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_runs_that_two_studies_share_are_declared_alike_so_one_trains_them():
    from vitlab.studies.runner import config_hash

    def hashes(name):
        return {r.name: config_hash(r) for r in get_study(name).runs("default")}
    posemb, dimensions = hashes("posemb"), hashes("dimensions")
    assert [dimensions[f"base-s{s}"] for s in (0, 1, 2)] == [posemb[f"fmnist-learned_1d-s{s}"] for s in (0, 1, 2)]
    assert hashes("axial")["vit-p4-s0"] == hashes("scaling")["vit-0-s0"]
