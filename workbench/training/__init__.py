"""The training engine: one loop for every algorithm of :data:`workbench.ALGORITHMS`.

``trainer.py`` (the loop: sample -> rewards -> score -> advantages -> update -> metrics row),
``config.py`` (:class:`TrainConfig`), ``rollout.py`` (groups, rewards, the batch),
``runner.py`` (the model's side of a step: sampling and token statistics), ``metrics.py`` (a
step's metrics and sample records), ``checkpoints.py``, ``distributed.py`` (several processes),
``timing.py``, ``loading.py`` (the policy and the accelerator), ``warmstart.py`` (supervised warm
starts), ``trackers.py`` (``report_to``: TensorBoard, trackio, wandb offline). Training imports no
analysis and no figure.
"""

from .checkpoints import load_checkpoint
from .config import DEFAULT_INIT, TrainConfig
from .metrics import METRIC_COLUMNS, METRICS
from .trainer import Trainer, resume, train
from .warmstart import warm_start

__all__ = [
    "DEFAULT_INIT",
    "load_checkpoint",
    "METRICS",
    "METRIC_COLUMNS",
    "TrainConfig",
    "Trainer",
    "resume",
    "train",
    "warm_start",
]
