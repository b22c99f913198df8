"""Training and fine-tuning: configuration (``config``), optimizer and schedule (``optim``), the run's state and its
resumable checkpoints (``state``), the wall-clock budget (``budget``), run folders (``rundir``), what a run logs
(``runlog``) and the loop (``trainer``: ``train``, imported from there as it pulls in the data pipeline)."""

from vitlab.train.config import ConfigError, TrainConfig, TrainingError, list_recipes, load_config
from vitlab.train.rundir import load_resume_config, new_run_dir
from vitlab.train.state import TrainState

__all__ = ["ConfigError", "TrainConfig", "TrainState", "TrainingError", "list_recipes", "load_config",
           "load_resume_config", "new_run_dir"]
