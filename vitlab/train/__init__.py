"""Training and fine-tuning: configuration (``config``), optimizer and schedule (``optim``), resumable
checkpoints (``state``) and the loop (``trainer``)."""

from vitlab.train.config import ConfigError, TrainConfig, list_recipes, load_config

__all__ = ["ConfigError", "TrainConfig", "list_recipes", "load_config"]
