"""``TrainConfig``: every setting of a training run that is not the model or the task, in one dataclass.

The command line builds it (:meth:`TrainConfig.from_args`); Python users build it directly::

    from maskspec_fast.train import TrainConfig, train
    from maskspec_fast.train.tasks import PretrainTask
    result = train(PretrainTask(model), dataset, TrainConfig(out="runs/pt", steps=1000, batch_size=64), LogMel(), device)

What the task learns (mask ratio, augmentation strengths, label smoothing) belongs to the model's config or the
task object; how long, how fast and how safely it runs belongs here.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class TrainConfig:
    """Settings of one run of :func:`maskspec_fast.train.train`.

    Schedule: ``steps`` optimizer steps of ``batch_size`` clips (the GLOBAL batch over all processes and all
    ``accum_steps`` micro-batches), peak lr ``lr`` or, when it is None, ``blr * batch_size / 256`` (MAE's rule),
    ``warmup_steps`` of linear warm-up then a half-cycle cosine down to ``min_lr``; AdamW ``betas`` (MAE's (0.9, 0.95)
    for pre-training; fine-tuning takes the recipe's), ``weight_decay`` (none on biases, norms and tokens), gradients
    clipped to norm ``clip_grad`` (0: off).

    Non-finite steps: a step whose loss or gradient norm is NaN/Inf is never applied. The run stops there,
    naming the checkpoint it can continue from (not one written after the loss diverged, nor the one the failing
    step ran on: :mod:`maskspec_fast.train.divergence`); with ``skip_nonfinite`` the batch is skipped and counted instead, until
    more than ``max_nonfinite_skips`` steps in a row were skipped (then it stops the same way: weights or
    data that give only non-finite steps never recover by skipping). Under fp16 an overflowing gradient is
    left to the grad scaler (it skips that update and lowers its scale), not counted.
    """

    out: str = "runs/train"
    steps: int = 300
    batch_size: int = 32
    accum_steps: int = 1
    lr: float | None = None
    blr: float = 1.5e-4
    min_lr: float = 0.0
    warmup_steps: int = 30
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 with a grad scaler)
    seed: int = 0
    # input
    workers: int = 1
    frontend: str = "torch"  # torch | dali | auto
    skip_bad_files: bool = False
    balanced_sampling: bool = False
    # safety and output
    skip_nonfinite: bool = False
    max_nonfinite_skips: int = 20  # consecutive skipped steps before a --skip-nonfinite run stops
    save_every: int = 100
    keep: int = 3
    resume: str | None = None  # a checkpoint directory or "auto"
    log_every: int = 5
    picture_every: int = 0
    eval_every: int = 0
    eval_at_start: bool = False  # evaluate the starting point too (it competes for the best checkpoint)
    patience: int = 0  # stop after this many evaluations without improvement (0: never stop early)
    tensorboard: bool = False
    quiet: bool = False
    compile: bool = False  # torch.compile the model in place (backends.compile_module): same checkpoints, same rules
    compile_backend: str = "inductor"  # inductor | aot_eager | eager (aot_eager: graph capture without codegen)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.accum_steps < 1:
            raise ValueError(f"need steps >= 0, batch_size >= 1, accum_steps >= 1; got {self.steps}, "
                             f"{self.batch_size}, {self.accum_steps}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.frontend not in ("torch", "dali", "auto"):
            raise ValueError(f"frontend must be torch, dali or auto, got {self.frontend!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.max_nonfinite_skips < 0:
            raise ValueError(f"max_nonfinite_skips must be >= 0, got {self.max_nonfinite_skips}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")

    def peak_lr(self) -> float:
        """The lr the schedule peaks at: ``lr``, else ``blr * batch_size / 256``."""
        from .schedule import scaled_lr

        return self.lr if self.lr is not None else scaled_lr(self.blr, self.batch_size)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The fields that the parsed command line names and sets (absent or None: the field's default)."""
        given = vars(args)
        return cls(**{f.name: given[f.name] for f in dataclasses.fields(cls) if given.get(f.name) is not None})


__all__ = ["TrainConfig"]
