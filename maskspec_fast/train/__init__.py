"""Training: ``python -m maskspec_fast.train {pretrain,finetune,eval}`` (see ``--help``), or from Python:
:class:`TrainConfig` + a task (:mod:`maskspec_fast.train.tasks`) + :func:`train`, or :func:`finetune` (the
fine-tuning procedure, :class:`FinetuneRecipe` defaults)."""
from .config import TrainConfig
from .finetune import FinetuneResult, finetune
from .loop import NonFiniteLoss, Trainer, train
from .recipe import FinetuneRecipe
from .state import TrainerState
from .tasks import FinetuneTask, PretrainTask

__all__ = ["FinetuneRecipe", "FinetuneResult", "FinetuneTask", "NonFiniteLoss", "PretrainTask", "TrainConfig", "Trainer",
           "TrainerState", "finetune", "train"]
