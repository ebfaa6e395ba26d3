"""``TrainerState``: where a run stands (step, data position, counters, best metric), and the collective save
and restore of a whole training checkpoint around it (model, optimizer, grad scaler, every rank's RNG states).

The ``trainer.pt`` dict keeps the keys of earlier versions (``step``, ``epoch``, ``batch_in_epoch``, ``rng``, ...)
so their checkpoints resume.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .distributed import DistInfo, all_gather_objects, barrier


@dataclass
class TrainerState:
    """Progress of a run. ``batch_in_epoch`` counts the global batches of ``epoch`` already used; ``best`` is
    ``{"metric", "value", "step"}`` of the best evaluation so far (higher is better), or None."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_bad: int = 0
    nonfinite: int = 0
    best: dict[str, Any] | None = None
    global_batch: int = 0
    frontend: str = "torch"
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # what an input pipeline needs to resume (e.g. shards)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["best"] = self.best or {}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["best"] = d.get("best") or None
        return cls(**kw)

    def advance_batch(self) -> None:
        self.batch_in_epoch += 1

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0


def save_training(
    out: Path,
    state: TrainerState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
    keep: int,
    name: str | None = None,
) -> None:
    """Collective: every rank's RNG state is gathered, rank 0 writes, all wait (barrier) until it is on disk."""
    rngs = all_gather_objects(rng_state())
    if info.is_main:
        blob = {**state.to_dict(), "optimizer": optimizer.state_dict(), "rng": rngs[0], "rng_ranks": rngs,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {}}
        save_checkpoint(out, state.step, model, blob, keep=keep, name=name)
    barrier()


def restore_training(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
    device: torch.device,
) -> TrainerState:
    """Load a checkpoint written by :func:`save_training` into the live objects; returns its state. This rank's
    RNG states are restored (rank 0's when the process count changed)."""
    from safetensors.torch import load_file

    blob = load_trainer_state(path)
    model.load_state_dict(load_file(str(Path(path) / "model.safetensors"), device=str(device)), strict=True)
    optimizer.load_state_dict(blob["optimizer"])
    if blob.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(blob["scaler"])
    ranks = blob.get("rng_ranks")
    set_rng_state(ranks[info.rank] if ranks and len(ranks) == info.world_size else blob["rng"])
    return TrainerState.from_dict(blob)


__all__ = ["TrainerState", "restore_training", "save_training"]
