"""Training: configs, optimisers and schedules, the training loop, checkpoints, distributed set-up.

    from vitlab.training import load_config, train
    result = train(load_config("configs/fashion-mnist.toml", ["optim.lr=3e-4"]))
    print(result.summary())
"""

from .config import ConfigError, TrainConfig, from_dict, load_config
from .loop import TrainingDiverged, classification_loss
from .trainer import TrainResult, Trainer, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "classification_loss",
           "from_dict", "load_config", "train"]
