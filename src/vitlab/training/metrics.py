"""What a run leaves to read: metrics.jsonl, the training-curve PNG, progress on the terminal."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..fileio import atomic_write, atomic_write_text


class MetricsLog:
    """Append-only JSONL, one record per line: {"step", "loss", "lr", ...} or {"step", "eval_accuracy", ...}."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, step: int, unevaluated: str | None = None) -> None:
        """On resume: forget records past the checkpoint, they will be written again; so is the evaluation of
        the checkpoint's own step when it was saved before it (the record holding metric `unevaluated`)."""
        kept = [r for r in self.read() if r.get("step", 0) < step or r.get("step", 0) == step and unevaluated not in r]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return records


def metric_label(metric: str) -> str:
    """'eval_accuracy' -> 'eval top-1', 'eval_masked_accuracy' -> 'eval masked accuracy'."""
    return "eval top-1" if metric == "eval_accuracy" else metric.replace("_", " ")


def format_metric(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if metric.endswith("accuracy") else f"{value:.4f}"


def plot_curves(records: list[dict], path: Path, title: str = "", metric: str = "eval_accuracy") -> None:
    """Training loss, learning rate and the evaluation metric (top-1, or a training objective's) against the
    step, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r]
    evals = [r for r in records if metric in r]
    percent = metric.endswith("accuracy")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    axes[0].set(xlabel="step", ylabel="training loss", yscale="log")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train], lw=1)
    axes[1].set(xlabel="step", ylabel="learning rate")
    for key, label in ((metric, "model"), (f"{metric}_ema", "EMA")):
        pts = [(r["step"], 100 * r[key] if percent else r[key]) for r in evals if key in r]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=label)
    axes[2].set(xlabel="step", ylabel=metric_label(metric) + (" (%)" if percent else ""))
    if evals:
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """A tqdm bar (step, loss, images/s, ETA) on a terminal; a log line every `every` steps otherwise."""

    def __init__(self, total: int, start: int, every: int, enabled: bool, stream=None,
                 seconds_left: float | None = None):
        self.total, self.every, self.enabled = total, every, enabled
        self.seconds_left = seconds_left  # a time budget's rest: the run ends then if its steps have not
        self.stream = stream or sys.stdout
        self.bar = None
        self.start_step, self.start_time = start, time.perf_counter()
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=self.stream)

    def update(self, step: int, loss: float, images_per_s: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            left = self.budget_left(time.perf_counter() - self.start_time)
            budget = {} if left is None else {"budget_left": format_duration(left)}
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", lr=f"{lr:.2e}", **budget,
                                 refresh=False)
        elif step % self.every == 0 or step == self.total:
            done = step - self.start_step
            elapsed = time.perf_counter() - self.start_time
            eta = elapsed / max(done, 1) * (self.total - step)
            left = self.budget_left(elapsed)
            if left is not None:
                eta = min(eta, left)
            print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {images_per_s:.0f} img/s  "
                  f"eta {format_duration(eta)}", file=self.stream, flush=True)

    def budget_left(self, elapsed: float) -> float | None:
        """Seconds of the time budget left after `elapsed` (None without a budget)."""
        return None if self.seconds_left is None else max(self.seconds_left - elapsed, 0.0)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
