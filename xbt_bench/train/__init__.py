"""Training: the one loop every trained method and toy model goes through."""

from .loop import TrainConfig, TrainLog, train

__all__ = ["TrainConfig", "TrainLog", "train"]
