"""Experiment trackers against the real libraries, offline: TensorBoard event files, a real MLflow server on
127.0.0.1, W&B in offline mode. Each holds what metrics.jsonl holds, and a resumed run continues the same
tracker run without a duplicate step."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import training_support as ts
import tracking_support as tks
from vitlab.cli import main
from vitlab.training import tracking
from vitlab.training.trainer import Trainer

pytest.importorskip("tensorboard", reason="make test installs the trackers (pip install -e '.[tracking extras]')")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    tks.offline(monkeypatch, tmp_path / "home")


def tracked_config(tmp_path: Path, name: str, to: list[str], steps: int = 8, **log) -> Path:
    raw = ts.tiny_config(tmp_path / name, log={"to": to, **log},
                         train={"steps": steps, "log_every": 1, "checkpoint_every": 4, "plot": True})
    return ts.write_config(tmp_path / f"{name}.yaml", raw)


def train_crashing_after(step: int, config: Path, monkeypatch) -> None:
    """Train `config` until just after the metric line of `step` (past the checkpoint before it), then crash."""
    original = Trainer.log_window

    def log_window_then_crash(self, *args):
        original(self, *args)
        if self.step == step:
            raise RuntimeError("the machine went down")

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "log_window", log_window_then_crash)
        with pytest.raises(RuntimeError, match="went down"):
            main(["train", str(config)])


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tracking, "_importable", lambda module: module != "mlflow")
    config = tracked_config(tmp_path, "run", ["tensorboard", "mlflow"])
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "vitlab train: error: log.to: MLflow is not installed; pip install 'vitlab[mlflow]'"
    assert not (tmp_path / "run").exists()
    assert main(["study", "pooling", "--quick", "--out", str(tmp_path / "study"), "--log", "mlflow"]) == 2
    assert "--log: MLflow is not installed; pip install 'vitlab[mlflow]'" in capsys.readouterr().err
    assert not (tmp_path / "study").exists()
    assert main(["train", str(config), "--set", 'log.to=["neptune"]']) == 2
    assert "log.to: 'neptune' is not a tracker; use any of tensorboard, mlflow, wandb" in capsys.readouterr().err


def test_tensorboard_scalars_equal_metrics_jsonl_and_a_crashed_run_resumes_into_the_same_log(tmp_path, monkeypatch):
    config = tracked_config(tmp_path, "run", ["tensorboard"], tags={"arm": "baseline"})
    run_dir = tmp_path / "run"
    train_crashing_after(6, config, monkeypatch)  # steps 5 and 6 reached TensorBoard; the checkpoint is at 4
    assert main(["train", str(config)]) == 0

    events = tks.tensorboard_run(run_dir / "tensorboard")
    scalars = tks.tensorboard_scalars(events)
    tks.assert_same_series(scalars, run_dir)  # steps 5 and 6 once each, as written again after the resume
    final = json.loads((run_dir / "final_eval.json").read_text())
    assert scalars["final/top1"] == [(8, pytest.approx(final["top1"]))] and final["step"] == 8
    assert final["top1"] == pytest.approx(tks.metrics_jsonl(run_dir)["eval_accuracy"][-1][1])
    assert set(events.Tags()["images"]) == {"training_curves", "confusion_matrix"}
    assert {"model_card/text_summary", "final_eval/text_summary"} <= set(events.Tags()["tensors"])
    hparams = tks.tensorboard_hparams(events)
    assert hparams["arm"] == "baseline" and hparams["optim.lr"] == pytest.approx(3e-3)
    assert hparams["model.name"] == "ViT-Ti/16" and not any(k.startswith("log.") for k in hparams)
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one per session, one log


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with tks.mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


def test_mlflow_server_holds_params_metrics_and_artifacts_and_a_resume_appends_to_the_same_run(
        tmp_path, monkeypatch, mlflow_server):
    config = tracked_config(tmp_path, "run", ["mlflow"], tags={"arm": "baseline"},
                            mlflow={"tracking_uri": mlflow_server.url, "experiment": "tracking-test"})
    run_dir = tmp_path / "run"
    train_crashing_after(6, config, monkeypatch)
    first = tracking.read_state(run_dir)["mlflow"]["run_id"]
    client = mlflow_server.client()
    assert client.get_run(first).info.status == "FAILED"
    assert main(["train", str(config)]) == 0

    experiment = client.get_experiment_by_name("tracking-test")
    (run,) = client.search_runs([experiment.experiment_id])  # one run: the resume continued it
    assert run.info.run_id == first and run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["train.steps"] == "8"
    assert run.data.tags["arm"] == "baseline" and run.data.tags["vitlab.run_dir"] == str(run_dir.resolve())
    history = {key: tks.mlflow_history(client, first, key) for key in run.data.metrics}
    tks.assert_same_series(history, run_dir, exact=True, resumed=True)  # steps 5 and 6 were not sent twice
    assert history["final/top1"] == [(8, json.loads((run_dir / "final_eval.json").read_text())["top1"])]
    artifacts = {a.path for a in client.list_artifacts(first)} | {a.path for a in client.list_artifacts(first, "figures")}
    assert {"model_card.md", "final_eval.json", "summary.json", "figures/training_curves.png",
            "figures/confusion_matrix.png"} <= artifacts
    card = Path(client.download_artifacts(first, "model_card.md", str(tmp_path)))
    assert card.read_text() == (run_dir / "checkpoints/step-00000008/README.md").read_text()


def test_a_tracking_server_killed_mid_run_costs_one_warning_not_the_run(tmp_path, monkeypatch, recwarn):
    with tks.mlflow_server(tmp_path / "server") as server:
        config = tracked_config(tmp_path, "run", ["mlflow", "tensorboard"], steps=12,
                                mlflow={"tracking_uri": server.url})
        original = tracking.MlflowTracker.log_metrics

        def kill_the_server_at_step_4(self, values, step):
            if step == 4:
                server.kill()
            original(self, values, step)

        monkeypatch.setattr(tracking.MlflowTracker, "log_metrics", kill_the_server_at_step_4)
        start = time.monotonic()
        assert main(["train", str(config)]) == 0
        assert time.monotonic() - start < 120  # a few retries, not MLflow's default of minutes per request
    run_dir = tmp_path / "run"
    series = tks.metrics_jsonl(run_dir)
    assert [s for s, _ in series["loss"]] == list(range(1, 13)) and [s for s, _ in series["eval_accuracy"]] == [12]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 12
    dropped = [str(w.message) for w in recwarn if "logging stopped" in str(w.message)]
    assert len(dropped) == 1 and dropped[0].startswith("MLflow logging stopped (") and "\n" not in dropped[0]
    tks.assert_same_series(tks.tensorboard_scalars(tks.tensorboard_run(run_dir / "tensorboard")), run_dir)
    from mlflow import MlflowClient  # what reached the store before the server died is there

    store = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'server/mlflow.db'}")
    run_id = tracking.read_state(run_dir)["mlflow"]["run_id"]
    assert tks.mlflow_history(store, run_id, "loss") == series["loss"][:3]


def test_wandb_offline_run_holds_every_metric_and_a_resume_continues_the_same_run(tmp_path, monkeypatch):
    config = tracked_config(tmp_path, "run", ["wandb"], tags={"arm": "baseline"}, group="arms",
                            wandb={"project": "vitlab-test"})
    run_dir = tmp_path / "run"
    train_crashing_after(6, config, monkeypatch)
    assert main(["train", str(config)]) == 0

    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    runs = [tks.wandb_offline_run(folder) for folder in folders]
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id == tracking.read_state(run_dir)["wandb"]["run_id"]
    first = runs[0]
    assert (first.project, first.group, first.name, first.tags) == ("vitlab-test", "arms", "run", ["arm=baseline"])
    assert first.config["optim"]["lr"] == 3e-3 and first.config["tags"] == {"arm": "baseline"}
    logged = {key: tks.wandb_series(runs, key) for key in tks.metrics_jsonl(run_dir)}
    tks.assert_same_series(logged, run_dir, exact=True, resumed=True)  # steps 5 and 6 were not sent twice
    assert runs[1].summary["final/top1"] == json.loads((run_dir / "final_eval.json").read_text())["top1"]
    assert {"model_card.md", "final_eval.json"} <= set(runs[1].files)
    assert (folders[1] / "files/model_card.md").read_text() == (
        run_dir / "checkpoints/step-00000008/README.md").read_text()
    assert any(f.startswith("media/images/confusion_matrix_8_") for f in runs[1].files)
