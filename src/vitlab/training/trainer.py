"""`train(cfg)`: build the run (model, data, optimiser), resume it if it was started before, and train.

The step (training/step.py): for each of `accumulation_steps` micro-batches, the objective's loss under the
run's precision and backward (gradients synchronised across ranks only on the last); clip the global gradient
norm; check the loss is finite; step the optimiser; update the EMA. Every `checkpoint_every` steps, on
SIGTERM/SIGINT, and at the end both before and after the final evaluation the whole state is saved (a signal
during the end waits until it is written); running the same command again continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_pretrained
from ..checkpoints.adapt import adapt_model, reset_head
from ..data.preprocessing import from_data_config
from ..fileio import atomic_write_text
from ..models import create_model
from ..runtime import Dist, all_reduce_floats, barrier, launch_env, resolve_precision, setup, teardown
from . import checkpointing
from .checks import architecture, check_built_objective, check_resume_architecture
from .config import ConfigError, TrainConfig, to_yaml
from .distributed import unwrap, wrap
from .ema import EMA
from .metrics import MetricsLog, Progress, format_duration, format_metric, metric_label, plot_curves
from .objectives import TrainingModule, build_objective, head_classes
from .optim import build_optimizer
from .schedule import lr_factor, set_learning_rate
from .step import TrainingDiverged, clip_gradients, forward_backward
from .tracking import Tracking

FINAL_EVAL, CONFUSION_PNG = "final_eval.json", "confusion_matrix.png"  # written when the run logs to trackers


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # optimiser steps done, in total (this and earlier sessions)
    # the objective's validation metric (`metric`): top-1 for classification, a loss (lower is better) for some
    # self-supervised objectives; see training/objectives
    last_metric: float | None = None
    best_metric: float | None = None
    last_metric_ema: float | None = None
    wall_time_s: float = 0.0  # this session
    train_time_s: float = 0.0  # training over every session of the run (resumes included)
    out_of_time: bool = False  # stopped early by train.max_minutes
    images_per_s: float = 0.0  # this session
    skipped_images: int = 0  # bad images the loader skipped
    skipped_steps: int = 0  # steps skipped for a non-finite loss (train.on_nan = "skip")
    resumed_from: int | None = None
    interrupted_by: int | None = None  # the signal that stopped the run early
    losses: list[float] = field(default_factory=list)  # this session's per-step losses
    metric: str = "eval_accuracy"

    def summary(self) -> str:
        def pct(x):
            return format_metric(self.metric, x)

        lines = [f"run {self.run_dir}: {self.steps} steps" + (f" (resumed at {self.resumed_from})"
                                                              if self.resumed_from is not None else ""),
                 f"  {metric_label(self.metric)}: last {pct(self.last_metric)}, best {pct(self.best_metric)}"
                 + (f", EMA {pct(self.last_metric_ema)}" if self.last_metric_ema is not None else ""),
                 f"  wall time {format_duration(self.wall_time_s)}, {self.images_per_s:.0f} images/s",
                 f"  skipped: {self.skipped_images} bad images, {self.skipped_steps} non-finite steps"]
        if self.out_of_time:
            lines.append("  stopped early: train.max_minutes reached")
        if self.interrupted_by is not None:
            lines.append(f"  interrupted by signal {self.interrupted_by}; run the same command again to resume")
        return "\n".join(lines)


def build_loaders(cfg: TrainConfig, d: Dist, micro_batch: int):
    from ..data import build_loader

    train = build_loader(cfg.data, cfg.data.train_split, train=True, rank=d.rank, world_size=d.world_size,
                         device=d.device, batch_size=micro_batch)
    evaluation = build_loader(cfg.data, cfg.data.eval_split, train=False, rank=d.rank, world_size=d.world_size,
                              device=d.device, batch_size=micro_batch)
    return train, evaluation


def initial_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The run's model before training: a fresh one from the registry, or model.init loaded for fine-tuning."""
    overrides = dict(cfg.model.overrides)
    if overrides.pop("num_classes", num_classes) != num_classes:
        raise ConfigError(f"model.overrides.num_classes = {cfg.model.overrides['num_classes']} conflicts with the "
                          f"{num_classes} classes of data.dataset = {cfg.data.dataset!r}: the data set sets the class "
                          "count (remove num_classes from model.overrides)")
    if cfg.model.init is None:
        return create_model(cfg.model.name, **architecture(cfg, num_classes))
    model = load_pretrained(cfg.model.init, image_size=cfg.data.image_size, **overrides)
    if cfg.model.reset_head:
        return reset_head(model, num_classes)
    return adapt_model(model, num_classes=num_classes)


class SignalFlag:
    """Remember a SIGTERM/SIGINT instead of dying, so the step can finish and a checkpoint be saved."""

    def __init__(self):
        self.received: int | None = None
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # not the main thread
                self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One training run. `loaders` = (train, eval) replaces the data the config names (e.g. images in memory);
    `model` replaces the model the config names (its head already fits the train loader's classes)."""

    def __init__(self, cfg: TrainConfig, *, loaders=None, model: nn.Module | None = None):
        self.cfg = cfg
        self.d = setup(cfg.distributed.device, cfg.distributed.backend)
        self.run_dir = Path(cfg.run_dir)
        settings = cfg.train
        self.precision = resolve_precision(settings.precision, self.d.device)
        self.micro_batch = cfg.data.batch_size // (self.d.world_size * settings.accumulation_steps)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.train_loader, self.eval_loader = loaders or build_loaders(cfg, self.d, self.micro_batch)
        self.num_classes = self.train_loader.num_classes
        self.total_steps = settings.steps or math.ceil(
            settings.epochs * len(self.train_loader) / settings.accumulation_steps)

        self.preprocessing = from_data_config(cfg.data)  # label names are added once known
        classes = head_classes(cfg.objective, self.num_classes)
        if model is None:
            model = initial_model(cfg, classes)
        elif model.num_classes != classes:
            raise ValueError(f"the model has {model.num_classes} outputs; the objective needs {classes}")
        check_built_objective(cfg, model.config)  # model.init in a format that does not say its architecture
        objective = build_objective(cfg.objective, model_config=model.config, preprocessing=self.preprocessing,
                                    loss=cfg.loss, device=self.d.device, precision=self.precision)
        self.model_config = model.config
        self.label_names = getattr(self.train_loader, "class_names", None) if objective.reads_labels else None
        self.preprocessing = self.preprocessing.replace(label_names=self.label_names)
        if cfg.model.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.d.is_main:
            checkpointing.recover(self.run_dir)
        barrier()
        self.resume_path = checkpointing.find_resumable(self.run_dir, self.d.world_size)
        if self.resume_path is not None:  # weights first, before sharding
            check_resume_architecture(cfg, model.config, checkpoint=self.resume_path)
            model.load_state_dict(checkpointing.load_model_weights(self.resume_path))
            objective.load_state_dict(checkpointing.load_objective_weights(self.resume_path))
        # self.model: the ViT (what the checkpoint's model.safetensors holds); self.network: it and the
        # objective's parts, wrapped for DDP/FSDP; self.compiled_network(images, targets): the loss
        self.model, self.objective = model.to(self.d.device), objective.to(self.d.device)
        self.network = wrap(TrainingModule(self.model, self.objective), cfg.distributed, self.d,
                            precision=self.precision)
        self.compiled_network = torch.compile(self.network) if settings.compile else self.network
        self.eval_model = torch.compile(self.model) if settings.compile else self.model
        self.optimizer = build_optimizer(unwrap(self.network), cfg.optim, device_type=self.d.device.type,
                                         sharded=cfg.distributed.strategy == "fsdp" and self.d.enabled)
        self.ema = EMA(unwrap(self.network), settings.ema_decay) if settings.ema_decay else None
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.tracking = Tracking()  # fit() starts the trackers of cfg.log.to on rank 0
        self.state = {"best_metric": None, "last_metric": None, "last_metric_ema": None,
                      "skipped_steps": 0, "train_time_s": 0.0, **self.objective.run_state()}
        self.step = 0
        self.window_logs: dict[str, float] = {}  # an objective's extra logs, summed since the last metric line
        self.session_start = time.perf_counter()  # fit() sets it again when training starts
        self.stop_requested = self.out_of_time = False  # set by each step's all-reduce
        self.budget_used = 0.0  # the fraction of train.max_minutes spent, rank 0's clock (each step's all-reduce)
        if self.resume_path is not None:
            saved = checkpointing.restore(self.resume_path, model=self.network, optimizer=self.optimizer,
                                          ema=self.ema, loader=self.train_loader, d=self.d)
            self.step = saved.pop("step")
            saved.pop("world_size", None)
            self.objective.check_resume(saved, self.resume_path)
            self.state.update(renamed_state(saved))
        else:
            torch.manual_seed(cfg.seed + self.d.rank)  # dropout and stochastic depth differ across ranks

    # ---- the step ---------------------------------------------------------------------------------------
    def micro_batches(self):
        """Batches forever, epoch after epoch (the loader continues from its saved position).

        The loader must not move the global RNG that dropout and stochastic depth draw from (a torch
        DataLoader seeds its workers from it each epoch), or a resumed run would diverge: it is put back.
        """
        while True:
            epoch = iter(self.train_loader)
            empty = True
            while True:
                rng = torch.get_rng_state()
                try:
                    batch = next(epoch)
                except StopIteration:
                    break
                finally:
                    torch.set_rng_state(rng)
                empty = False
                yield batch
            if empty:
                raise RuntimeError("the training loader yielded no batch: is the split empty, or the batch too big?")

    def sync_context(self, last: bool):
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if last or not self.d.enabled:
            return contextlib.nullcontext()
        if hasattr(self.network, "no_sync"):
            return self.network.no_sync()
        set_gradient_sync(self.network, False)  # FSDP2; re-enabled below
        return contextlib.nullcontext()

    def train_step(self, batches) -> tuple[float, float, int]:
        """One optimiser step; returns (loss, gradient norm, images) over all ranks."""
        accum = self.cfg.train.accumulation_steps
        loss_sum, images = 0.0, 0
        for i in range(accum):
            x, y = next(batches)
            x, y = x.to(self.d.device, non_blocking=True), y.to(self.d.device, non_blocking=True)
            last = i == accum - 1
            if last:
                set_gradient_sync(self.network, True)
            with self.sync_context(last):
                loss, logs = forward_backward(self.compiled_network, x, y, self.precision, scale=accum)
            for key, value in logs.items():  # summed here, averaged over the log window in fit()
                self.window_logs[key] = self.window_logs.get(key, 0.0) + float(value) / accum
            loss_sum += loss.item()
            images += x.shape[0]
        grad_norm = clip_gradients(self.network.parameters(), self.cfg.train.clip_grad_norm)
        # a signal on any rank, or rank 0's clock past the budget, stops every rank after this step; every
        # rank reads the budget off rank 0's clock, so a schedule that follows it sets the same learning rate
        loss_total, images, stop_flag, self.budget_used = all_reduce_floats(
            [loss_sum, images, float(self.signals.received is not None),
             self.budget_fraction(self.train_time_s()) if self.d.is_main else 0.0])
        self.stop_requested, self.out_of_time = stop_flag > 0, self.budget_used >= 1.0
        return loss_total / self.d.world_size, grad_norm, int(images)

    def train_time_s(self) -> float:
        """Seconds of training so far, earlier sessions (before a resume) included."""
        return self.state["train_time_s"] + time.perf_counter() - self.session_start

    def budget_fraction(self, seconds: float) -> float:
        """The fraction of train.max_minutes that `seconds` of training make (0 without a time budget)."""
        budget = self.cfg.train.max_minutes
        return 0.0 if budget is None else seconds / (60 * budget)

    def finished(self) -> bool:
        """Whether a resumed run had already trained every step and evaluated the result."""
        return self.step >= self.total_steps and self.state.get("evaluated_step") == self.step

    def saved_result(self) -> TrainResult:
        """The result of a run that had finished, as its checkpoint holds it; nothing is trained or written."""
        return TrainResult(self.run_dir, self.step, resumed_from=self.step, last_metric=self.state["last_metric"],
                           best_metric=self.state["best_metric"], last_metric_ema=self.state["last_metric_ema"],
                           skipped_steps=self.state["skipped_steps"])

    def fit(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        if self.resume_path is not None and self.finished():
            if d.is_main:
                print(f"{self.run_dir} finished at step {self.step} ({self.resume_path}); nothing to do")
            return self.saved_result()
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", to_yaml(cfg))
            if self.resume_path is not None:
                evaluated = self.state.get("evaluated_step") == self.step
                self.metrics.truncate_after(self.step, unevaluated=None if evaluated else self.objective.metric)
            if cfg.log.to:
                self.tracking = Tracking.start(cfg, self.run_dir, metric=self.objective.metric,
                                               resume_step=self.step if self.resume_path is not None else None)
        try:
            return self.train_session()
        except BaseException:
            self.tracking.close("failed")
            raise

    def train_session(self) -> TrainResult:
        """Train from the current step to the last (or a signal, or the time budget), evaluate, save."""
        settings, d = self.cfg.train, self.d
        result = TrainResult(self.run_dir, self.step, resumed_from=self.step if self.resume_path else None)
        budget_s = None if settings.max_minutes is None else 60 * settings.max_minutes - self.state["train_time_s"]
        progress = Progress(self.total_steps, self.step, settings.log_every, enabled=d.is_main, seconds_left=budget_s)
        if self.resume_path is not None:
            progress.message(f"resuming from {self.resume_path} (step {self.step}/{self.total_steps})")
        self.model.train()
        self.session_start = start = time.perf_counter()
        self.budget_used = self.budget_fraction(self.state["train_time_s"])  # the same on every rank
        with SignalFlag() as self.signals:  # a signal during the run's end waits until its checkpoint is written
            images_seen = self.train_steps(result, progress)
            progress.close()
            if result.interrupted_by is None:
                self.finish_training(result, progress)
            self.save()
            wall = time.perf_counter() - start
            self.report(result, images_seen, wall)
            if d.is_main:
                self.finish(result)
        return result

    def finish_training(self, result: TrainResult, progress: Progress) -> None:
        """The run's end: its last step saved first (a run stopped while evaluating resumes here and only
        evaluates), then the evaluation; the caller saves again with the evaluation in the checkpoint."""
        if result.resumed_from != self.step:
            self.save()
        self.evaluate(progress)
        self.final_evaluation()
        if self.signals.received is not None and self.d.is_main:
            print(f"signal {self.signals.received} received while the run was ending: finishing its last "
                  "checkpoint first", flush=True)

    def report(self, result: TrainResult, images_seen: int, wall: float) -> None:
        result.steps = self.step
        result.wall_time_s = wall
        result.train_time_s = self.state["train_time_s"] + wall
        result.images_per_s = images_seen / max(wall, 1e-9)
        result.best_metric = self.state["best_metric"]
        result.last_metric = self.state["last_metric"]
        result.last_metric_ema = self.state["last_metric_ema"]
        result.skipped_steps = self.state["skipped_steps"]
        result.metric = self.objective.metric
        result.skipped_images = int(all_reduce_floats([getattr(self.train_loader, "skipped", 0)])[0])

    def train_steps(self, result: TrainResult, progress: Progress) -> int:
        """The optimiser steps of this session; returns the images they saw (all ranks)."""
        cfg, settings = self.cfg, self.cfg.train
        batches = self.micro_batches()
        start = time.perf_counter()
        images_seen, window_images, window_first, window_start = 0, 0, 0, start
        while self.step < self.total_steps:
            time_done = self.budget_used if cfg.schedule.follow_time else 0.0
            lr = set_learning_rate(self.optimizer, cfg.optim.lr, lr_factor(
                self.step, self.total_steps, cfg.schedule.warmup_steps, cfg.schedule.decay,
                cfg.schedule.end_factor, time_done=time_done))
            loss, grad_norm, images = self.train_step(batches)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                self.handle_bad_step(loss, progress)
            else:
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            images_seen += images
            window_images += images
            result.losses.append(loss)
            if self.step % settings.log_every == 0 or self.step == self.total_steps:
                now = time.perf_counter()
                rate = window_images / max(now - window_start, 1e-9)
                self.log_window(result.losses[window_first:], lr, grad_norm, rate)
                window_images, window_first, window_start = 0, len(result.losses), now
            progress.update(self.step, loss, images_seen / max(time.perf_counter() - start, 1e-9), lr)
            if settings.eval_every and self.step % settings.eval_every == 0 and self.step < self.total_steps:
                self.evaluate(progress)
            if self.stop_requested:
                result.interrupted_by = self.signals.received or signal.SIGTERM
                break
            if self.out_of_time:
                progress.message(f"train.max_minutes = {settings.max_minutes} reached at step {self.step}")
                result.out_of_time = True
                break
            if self.step % settings.checkpoint_every == 0 and self.step < self.total_steps:
                self.save()
        return images_seen

    def log_window(self, losses: list[float], lr: float, grad_norm: float, images_per_s: float) -> None:
        """The metric line of the steps since the last one (rank 0): the loss averaged over them, as one step's
        loss is too noisy to plot. The objective's extra logs are averaged too, and reset."""
        if self.d.is_main:
            logs = {k: v / len(losses) for k, v in self.window_logs.items()}
            self.log({"step": self.step, "loss": sum(losses) / len(losses), "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": images_per_s, **logs})
        self.window_logs = {}

    def log(self, record: dict) -> None:
        """A metrics.jsonl line (rank 0), also sent to the run's trackers."""
        self.metrics.write(record)
        self.tracking.log_metrics(record)

    def handle_bad_step(self, loss: float, progress: Progress) -> None:
        where = f"non-finite loss {loss} at step {self.step + 1}"
        if self.cfg.train.on_nan == "skip":
            self.state["skipped_steps"] += 1
            progress.message(f"{where}: step skipped (train.on_nan = 'skip')")
            return
        latest = checkpointing.list_checkpoints(self.run_dir)
        kept = f"the last good checkpoint is {latest[-1]}" if latest else "no checkpoint was written yet"
        raise TrainingDiverged(f"{where}; stopping ({kept}; set train.on_nan = 'skip' to skip such steps)")

    def evaluate(self, progress: Progress) -> None:
        """The objective's validation metrics (top-1 for classification), also with the EMA weights."""
        objective, metric = self.objective, self.objective.metric
        record = {"step": self.step, **objective.evaluate(self.eval_model, self.eval_loader, self.d,
                                                              precision=self.precision)}
        if self.ema is not None:
            with self.ema.applied():
                ema = objective.evaluate(self.eval_model, self.eval_loader, self.d, precision=self.precision)
            record.update({f"{k}_ema": v for k, v in ema.items()})
            self.state["last_metric_ema"] = record[f"{metric}_ema"]
        value, best = record[metric], self.state["best_metric"]
        self.state["evaluated_step"] = self.step
        self.state["last_metric"] = value
        better = max if objective.higher_is_better else min
        self.state["best_metric"] = value if best is None else better(best, value)
        if self.d.is_main:
            self.log(record)
            if self.cfg.train.plot:
                plot_curves(self.metrics.read(), self.run_dir / "training_curves.png", self.cfg.model.name, metric)
        ema_text = f", EMA {format_metric(metric, record[f'{metric}_ema'])}" if self.ema is not None else ""
        progress.message(f"step {self.step}: {metric_label(metric)} {format_metric(metric, value)}{ema_text}")

    def save(self) -> Path:
        state = {**self.state, "train_time_s": self.train_time_s(), "metric": self.objective.metric}
        return checkpointing.save(
            self.run_dir, self.step, model=self.network, optimizer=self.optimizer, ema=self.ema,
            objective_record=self.objective.record(),
            loader=self.train_loader, trainer_state=state, model_config=self.model_config,
            label_names=self.label_names, preprocessing=self.preprocessing, d=self.d,
            keep=self.cfg.train.keep_checkpoints)

    def final_evaluation(self) -> None:
        """For the trackers, a classifier's full evaluation: top-1/top-5, per-class accuracy and the confusion
        matrix (final_eval.json and confusion_matrix.png in the run directory). Collective."""
        if not self.cfg.log.to or self.objective.metric != "eval_accuracy" or not self.objective.reads_labels:
            return
        from ..evaluation import save_confusion_png
        from ..evaluation.metrics import classification_summary

        result = classification_summary(self.eval_model, self.eval_loader, self.d.device, self.num_classes,
                                        self.precision)
        if self.d.is_main:
            atomic_write_text(self.run_dir / FINAL_EVAL, json.dumps({"step": self.step, **result}, indent=2) + "\n")
            save_confusion_png(result["confusion_matrix"], self.run_dir / CONFUSION_PNG, self.label_names,
                               title=f"{self.cfg.model.name}, step {self.step}")
            self.tracking.log_metrics({"step": self.step, **{f"final/{k}": v for k, v in result.items()
                                                             if k.startswith("top")}})

    def finish(self, result: TrainResult) -> None:
        """summary.json and the training curves; the trackers get the figures and the model card, and close."""
        if self.cfg.train.plot:
            plot_curves(self.metrics.read(), self.run_dir / "training_curves.png", self.cfg.model.name,
                        self.objective.metric)
        summary = {k: v for k, v in vars(result).items() if k != "losses"}
        summary["run_dir"] = str(summary["run_dir"])
        final_checkpoint = checkpointing.list_checkpoints(self.run_dir)[-1]
        summary["final_checkpoint"] = str(final_checkpoint)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        figures = {"training_curves": self.run_dir / "training_curves.png",
                   "confusion_matrix": self.run_dir / CONFUSION_PNG}
        files = {"model_card": final_checkpoint / "README.md", "final_eval": self.run_dir / FINAL_EVAL,
                 "summary": self.run_dir / "summary.json"}
        self.tracking.finish(self.step, images=figures, files=files,
                             status="interrupted" if result.interrupted_by is not None else "finished")


def set_gradient_sync(network: nn.Module, enabled: bool) -> None:
    """FSDP2: (stop) all-reducing gradients in each sharded part (the encoder, the objective's parts)."""
    for module in network.children():
        if hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(enabled)


# trainer.json of checkpoints written before the metric was named for what it is (it may be a loss)
OLD_STATE_KEYS = {"best_accuracy": "best_metric", "last_accuracy": "last_metric",
                  "last_accuracy_ema": "last_metric_ema"}


def renamed_state(saved: dict) -> dict:
    return {OLD_STATE_KEYS.get(key, key): value for key, value in saved.items()}


def train(cfg: TrainConfig, *, loaders=None, model: nn.Module | None = None) -> TrainResult:
    """Run (or resume) the training `cfg` describes, holding the run directory's lock (rank 0; under torchrun a
    refused rank 0 stops the others); the process group is torn down afterwards."""
    lock = checkpointing.RunLock(cfg.run_dir) if launch_env().is_main else contextlib.nullcontext()
    try:
        with lock:
            return Trainer(cfg, loaders=loaders, model=model).fit()
    finally:
        teardown()
