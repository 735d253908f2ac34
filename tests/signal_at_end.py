"""`vitlab train CONFIG` that signals itself at one point of the run's end (for tests/test_training_processes.py).

    python tests/signal_at_end.py POINT SIGNAL CONFIG

POINT is where the run is when the signal arrives, the last step already taken:
    during-final-eval   the first forward pass of the final evaluation
    before-final-save   the final evaluation done, its checkpoint not yet written
    during-final-save   inside the checkpoint written after the final evaluation (before its manifest)
    after-final-save    the checkpoint written, the run's summary not yet
SIGNAL is a name from the signal module (SIGTERM, SIGINT, SIGKILL). Only this test driver patches the trainer.
"""

from __future__ import annotations

import os
import signal
import sys

import training_support  # noqa: F401  (src on the path, one thread)
from vitlab.cli import main
from vitlab.training import checkpointing
from vitlab.training.trainer import Trainer

POINTS = ("during-final-eval", "before-final-save", "during-final-save", "after-final-save")


def instrument(point: str, signum: int) -> None:
    state = {"final_eval_started": False, "sent": False}

    def send():
        if not state["sent"]:
            state["sent"] = True
            os.kill(os.getpid(), signum)

    def patch(owner, name, before=None, after=None):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if before:
                before(*args)
            out = original(*args, **kwargs)
            if after:
                after(*args)
            return out

        setattr(owner, name, wrapper)

    def on_evaluate(trainer, *_):
        if trainer.step < trainer.total_steps:
            return
        state["final_eval_started"] = True
        if point == "during-final-eval":
            def signal_once(*_):
                handle.remove()
                send()

            handle = trainer.eval_model.register_forward_hook(signal_once)

    patch(Trainer, "evaluate", before=on_evaluate)
    if point == "before-final-save":
        patch(Trainer, "final_evaluation", after=lambda *_: send())
    if point == "during-final-save":
        patch(checkpointing, "write_manifest", before=lambda *_: state["final_eval_started"] and send())
    if point == "after-final-save":
        patch(Trainer, "finish", before=lambda *_: send())


if __name__ == "__main__":
    where, name, config = sys.argv[1:4]
    assert where in POINTS, where
    instrument(where, getattr(signal, name))
    sys.exit(main(["train", config]))
