"""Experiment trackers: a run's metrics, config, final evaluation, figures and model card in TensorBoard,
MLflow or Weights & Biases, as well as in the run directory (the `[log]` table).

    [log]
    to = ["tensorboard", "mlflow", "wandb"]   # any of them; none by default
    [log.mlflow]
    tracking_uri = "http://127.0.0.1:5000"

Every metrics.jsonl line goes to each tracker at its step, under the same names. Only rank 0 logs. A tracker
that fails (its server gone, a full disk) is dropped with one warning line; the training run goes on and
metrics.jsonl stays complete. The tracker runs' ids are kept in the run directory (tracking.json), so a
resumed run continues the same tracker runs: TensorBoard drops the steps after the checkpoint and has them
written again, MLflow and W&B are not sent a step they already have.

The settings are plain dataclasses and the libraries are imported only when a run starts, so reading a
config stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import one_line
from ..fileio import atomic_write_text

# name in log.to -> (the module it needs, the library's name); each is the extra vitlab[name]
TRACKERS = {"tensorboard": ("tensorboard", "TensorBoard"), "mlflow": ("mlflow", "MLflow"),
            "wandb": ("wandb", "Weights & Biases")}
WANDB_MODES = ("offline", "online")
STATE_FILE = "tracking.json"


@dataclass
class TensorBoardSettings:
    dir: Optional[str] = None  # the event files' folder; default: the run directory's tensorboard/


@dataclass
class MlflowSettings:
    # a server (http://host:5000), a store (sqlite:///mlflow.db) or a folder; default: MLFLOW_TRACKING_URI,
    # else MLflow's own default (sqlite:///mlflow.db in the working directory)
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None  # default: log.group, else "vitlab"


@dataclass
class WandbSettings:
    project: str = "vitlab"
    entity: Optional[str] = None  # default: the logged-in account's
    mode: Optional[str] = None  # offline | online; default: WANDB_MODE, else offline (`wandb sync` uploads later)
    dir: Optional[str] = None  # where W&B writes its wandb/ folder; default: the run directory


@dataclass
class LogConfig:
    to: list[str] = field(default_factory=list)  # tensorboard | mlflow | wandb, any of them
    name: Optional[str] = None  # the run's name in the trackers; default: the run directory's name
    group: Optional[str] = None  # runs shown together: the MLflow experiment, the W&B group (a study's)
    tags: dict = field(default_factory=dict)  # labels to filter runs by, e.g. a study's name and axes
    tensorboard: TensorBoardSettings = field(default_factory=TensorBoardSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)


def check(log: LogConfig) -> list[str]:
    """What is wrong with the [log] table (an unknown tracker, one not installed), as messages."""
    problems = [f"log.to: {name!r} is not a tracker; use any of {', '.join(TRACKERS)}"
                for name in log.to if name not in TRACKERS]
    if len(set(log.to)) != len(log.to):
        problems.append(f"log.to names a tracker twice: {log.to}")
    if log.wandb.mode not in (None, *WANDB_MODES):
        problems.append(f"log.wandb.mode = {log.wandb.mode!r} is not one of {', '.join(WANDB_MODES)}")
    return problems + [f"log.to: {message}" for message in not_installed(n for n in log.to if n in TRACKERS)]


def not_installed(names) -> list[str]:
    """'MLflow is not installed; pip install 'vitlab[mlflow]'' for each tracker whose library is missing."""
    return [f"{TRACKERS[name][1]} is not installed; pip install 'vitlab[{name}]'"
            for name in names if not _importable(TRACKERS[name][0])]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def flat_config(config: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}; lists and None as text (what params and hparams take)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix + key] = value
        else:
            flat[prefix + key] = json.dumps(value)
    return flat


# ---- the trackers ---------------------------------------------------------------------------------------------
class Tracker:
    """One tracker of one training run. `start` opens (saved: None) or continues (saved: what it returned before)
    the tracker's run; the others log to it. Every method may raise: `Tracking` catches and drops the tracker."""

    name = "tracker"
    skips_logged_steps = True  # whether steps it already has must not be sent again after a resume

    def __init__(self, cfg, run_dir: Path, *, metric: str):
        self.cfg, self.log, self.run_dir, self.metric = cfg, cfg.log, Path(run_dir), metric
        self.run_name = self.log.name or self.run_dir.name

    def config(self) -> dict:
        """The resolved config, less the [log] table (where the run is logged, not what it is)."""
        return {k: v for k, v in self.cfg.to_dict().items() if k != "log"}

    def params(self) -> dict:
        return flat_config(self.config())

    def where(self) -> str:
        """Where it logs: a saved run is continued only where it was started."""
        raise NotImplementedError

    def start(self, saved: dict | None, resume_step: int | None) -> dict:
        raise NotImplementedError

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_image(self, name: str, path: Path, step: int) -> None:
        raise NotImplementedError

    def log_file(self, name: str, path: Path, step: int) -> None:
        """A text file (the model card, the final evaluation) kept with the run as `name` + its suffix."""
        raise NotImplementedError

    def close(self, status: str) -> None:  # status: finished | interrupted | failed
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files through torch.utils.tensorboard; config and tags as hparams, so runs filter by them."""

    name = "tensorboard"
    skips_logged_steps = False  # a resumed writer purges the steps past the checkpoint (purge_step) instead

    def where(self) -> str:
        return str(Path(self.log.tensorboard.dir or self.run_dir / "tensorboard").resolve())

    def start(self, saved, resume_step):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(self.where(), purge_step=purge, flush_secs=30)
        if saved is None:
            values = {**flat_config(self.log.tags), **self.params()}
            for summary in hparams(values, {self.metric: None, "loss": None}):
                self.writer.file_writer.add_summary(summary)
        return {}

    def log_metrics(self, values, step):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def log_image(self, name, path, step):
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(name, pixels, step, dataformats="HWC")

    def log_file(self, name, path, step):
        text = path.read_text()
        self.writer.add_text(name, text if path.suffix == ".md" else f"```\n{text}\n```", step)

    def close(self, status):
        self.writer.close()


class MlflowTracker(Tracker):
    """An MLflow run through MlflowClient: the config as params, the tags as tags, files as artifacts."""

    name = "mlflow"
    STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
    # A server that went away costs a few seconds of retries, not MLflow's default of minutes per request
    # (the user's own MLFLOW_HTTP_REQUEST_* settings win).
    HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}

    def where(self) -> str:
        import mlflow

        return f"{self.log.mlflow.tracking_uri or mlflow.get_tracking_uri()} {self.experiment()}"

    def experiment(self) -> str:
        return self.log.mlflow.experiment or self.log.group or "vitlab"

    def start(self, saved, resume_step):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        for key, value in self.HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.client = MlflowClient(tracking_uri=self.log.mlflow.tracking_uri)
        if saved is not None:
            self.run_id = saved["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return {"run_id": self.run_id}
        tags = {**{k: str(v) for k, v in self.log.tags.items()}, "vitlab.run_dir": str(self.run_dir.resolve())}
        run = self.client.create_run(self.experiment_id(), run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(k, str(v)) for k, v in self.params().items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a request
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        return {"run_id": self.run_id}

    def experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.experiment()
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another run of the study created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def log_metrics(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_image(self, name, path, step):
        self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def log_file(self, name, path, step):
        self.client.log_text(self.run_id, path.read_text(), name + path.suffix)

    def close(self, status):
        self.client.set_terminated(self.run_id, self.STATUS[status])


class WandbTracker(Tracker):
    """A W&B run (offline unless told otherwise); the config as its config, the tags as key=value tags."""

    name = "wandb"

    def mode(self) -> str:
        return self.log.wandb.mode or os.environ.get("WANDB_MODE") or "offline"

    def where(self) -> str:
        settings = self.log.wandb
        return f"{settings.entity or ''}/{settings.project} {self.mode()}"

    def start(self, saved, resume_step):
        import wandb
        from wandb.sdk.lib.runid import generate_id

        run_id = saved["run_id"] if saved is not None else generate_id()
        root = Path(self.log.wandb.dir or self.run_dir)
        root.mkdir(parents=True, exist_ok=True)
        config = None if saved is not None else {**self.config(), "tags": dict(self.log.tags)}
        self.run = wandb.init(
            project=self.log.wandb.project, entity=self.log.wandb.entity, mode=self.mode(), dir=str(root),
            id=run_id, resume="allow", name=self.run_name, group=self.log.group, config=config,
            tags=[f"{k}={v}"[:64] for k, v in self.log.tags.items()], reinit="create_new",
            settings=wandb.Settings(console="off", quiet=True, x_save_requirements=False))
        return {"run_id": run_id}

    def log_metrics(self, values, step):
        self.run.log(values, step=step)

    def log_image(self, name, path, step):
        import wandb

        self.run.log({name: wandb.Image(str(path))}, step=step)

    def log_file(self, name, path, step):
        copy = Path(self.run.dir) / (name + path.suffix)  # a copy: the checkpoint it came from may be rotated away
        shutil.copyfile(path, copy)
        self.run.save(str(copy), base_path=self.run.dir, policy="now")

    def close(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)


TRACKER_CLASSES = {cls.name: cls for cls in (TensorBoardTracker, MlflowTracker, WandbTracker)}


# ---- a run's trackers ---------------------------------------------------------------------------------------------
class Tracking:
    """The trackers of one run (rank 0; none elsewhere). A failing tracker costs one warning and is dropped."""

    def __init__(self, trackers: list[Tracker] = (), run_dir: Path | None = None, state: dict | None = None):
        self.trackers, self.run_dir, self.state = list(trackers), run_dir, state or {}

    @classmethod
    def start(cls, cfg, run_dir: Path, *, metric: str, resume_step: int | None) -> "Tracking":
        """Open (or, resuming, continue) the tracker run of each tracker in cfg.log.to."""
        saved = read_state(run_dir) if resume_step is not None else {}
        tracking = cls([], run_dir)
        for name in cfg.log.to:
            tracker = TRACKER_CLASSES[name](cfg, run_dir, metric=metric)
            previous = saved.get(name)
            try:
                where = tracker.where()
                if previous is not None and previous.get("where") != where:
                    previous = None  # it logged elsewhere before: start a run here
                kept = tracker.start(previous, resume_step)
            except Exception as e:  # noqa: BLE001 - any failure of a tracker is the tracker's, not the run's
                drop_warning(tracker, e)
                continue
            tracking.trackers.append(tracker)
            tracking.state[name] = {**kept, "where": where, "steps": (previous or {}).get("steps", {})}
        tracking.save_state()
        return tracking

    def log_metrics(self, record: dict) -> None:
        """A metrics.jsonl record {"step": ..., name: value, ...}: each number to each tracker at that step."""
        step = int(record["step"])
        values = {k: float(v) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        changed = False
        for tracker in list(self.trackers):
            steps = self.state[tracker.name]["steps"]
            new = {k: v for k, v in values.items() if not tracker.skips_logged_steps or steps.get(k, -1) < step}
            if new and self.call(tracker, tracker.log_metrics, new, step) and tracker.skips_logged_steps:
                steps.update(dict.fromkeys(new, step))
                changed = True
        if changed:
            self.save_state()

    def finish(self, step: int, *, images: dict[str, Path], files: dict[str, Path], status: str = "finished") -> None:
        """The run's figures and text files (name -> path; those that exist), then close each tracker's run."""
        for tracker in list(self.trackers):
            calls = [(tracker.log_image, name, path) for name, path in images.items() if path.is_file()]
            calls += [(tracker.log_file, name, path) for name, path in files.items() if path.is_file()]
            for method, *args in calls:
                if not self.call(tracker, method, *args, step):
                    break
        self.close(status)

    def close(self, status: str) -> None:
        for tracker in list(self.trackers):
            self.call(tracker, tracker.close, status)
        self.trackers = []

    def call(self, tracker: Tracker, method, *args) -> bool:
        """method(*args); on failure the tracker is dropped with a warning. Whether it succeeded."""
        try:
            method(*args)
            return True
        except Exception as e:  # noqa: BLE001
            self.trackers.remove(tracker)
            drop_warning(tracker, e)
            with contextlib.suppress(Exception):
                tracker.close("failed")
            return False

    def save_state(self) -> None:
        if self.run_dir is not None and self.state:
            atomic_write_text(self.run_dir / STATE_FILE, json.dumps(self.state, indent=2) + "\n")


def read_state(run_dir: Path) -> dict:
    """tracking.json of a run: per tracker, its run's id, where it logs, and the last step of each metric sent."""
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def drop_warning(tracker: Tracker, error: Exception) -> None:
    reason = one_line(f"{type(error).__name__}: {error}")
    reason = reason if len(reason) <= 300 else reason[:297] + "..."
    warnings.warn(f"{TRACKERS[tracker.name][1]} logging stopped ({reason}); the training run goes on and "
                  "metrics.jsonl stays complete", stacklevel=3)

