"""Training: configs, optimisers and schedules, the Trainer and its step, checkpoints, DDP/FSDP.

    from vitlab.training import load_config, train
    result = train(load_config("fashion-mnist", ["optim.lr=3e-4"]))
    print(result.summary())
"""

from .config import ConfigError, TrainConfig, from_dict, load_config
from .losses import classification_loss
from .step import TrainingDiverged
from .trainer import TrainResult, Trainer, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "classification_loss",
           "from_dict", "load_config", "train"]
