"""Training: ``python -m maskspec_fast.train {pretrain,finetune,eval}`` (see ``--help``), or from Python:
:class:`TrainConfig` + a task (:mod:`maskspec_fast.train.tasks`) + :func:`train`."""
from .config import TrainConfig
from .loop import NonFiniteLoss, Trainer, train
from .state import TrainerState

__all__ = ["NonFiniteLoss", "TrainConfig", "Trainer", "TrainerState", "train"]
