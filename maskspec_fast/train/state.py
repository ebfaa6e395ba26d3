"""``TrainerState``: where a run stands (step, data position, counters, best metric), and the collective save
and restore of a whole training checkpoint around it (model, optimizer, grad scaler, every rank's RNG states).

The ``trainer.pt`` dict keeps the keys of earlier versions (``step``, ``epoch``, ``batch_in_epoch``, ``rng``, ...)
so their checkpoints resume.

What is saved is checked first: a model or optimizer state holding a NaN or an Inf is never written (the run
stops with :class:`NonFiniteLoss` naming the last good checkpoint). What is restored is checked too: the
checkpoint's model config must be the run's (sizes named when they differ), its tensors must fit (names, shapes,
floating dtypes), and ``trainer.pt`` is read weights-only; each problem is a one-line
:class:`~maskspec_fast.serialization.CheckpointError` naming the file.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import ModelConfig
from ..serialization import CheckpointError, check_state_dict, config_from_meta, read_meta
from .checkpoint import (
    COMPLETE,
    last_good_checkpoint,
    load_trainer_state,
    nonfinite_tensors,
    optimizer_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .distributed import DistInfo, all_gather_objects, barrier

# ModelConfig fields a resumed run may change (with a warning): they shape the training, not the weights.
RESUMABLE_CHANGES = ("mask_ratio", "norm_pix_loss", "drop_path_rate", "preset")


class NonFiniteLoss(RuntimeError):
    """Training stopped on a non-finite value: the loss, the gradient norm (the update was not applied), too
    many consecutive skipped steps, or a model/optimizer state that would have been saved. The message is one
    line naming the step and the last good checkpoint (or saying that none exists)."""


def last_good_note(out: Path) -> str:
    """``"last good checkpoint: <path> (...)"``, or that none exists, for the one-line error of a stopped run."""
    try:
        path = last_good_checkpoint(out)
    except CheckpointError as e:  # reporting must not fail on a damaged checkpoint; say what was found
        return f"no usable checkpoint found ({e})"
    if path is None:
        return f"no good checkpoint exists in {Path(out) / 'checkpoints'} (start again, e.g. with a lower lr)"
    return f"last good checkpoint: {path} (resume from it with --resume auto)"


@dataclass
class TrainerState:
    """Progress of a run. ``batch_in_epoch`` counts the global batches of ``epoch`` already used; ``best`` is
    ``{"metric", "value", "step"}`` of the best evaluation so far (higher is better), or None; ``loss`` and
    ``start_loss`` let ``--resume auto`` pass over a checkpoint written after the loss diverged."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_bad: int = 0
    nonfinite: int = 0
    nonfinite_run: int = 0  # consecutive skipped steps (0 after every applied update)
    best: dict[str, Any] | None = None
    global_batch: int = 0
    frontend: str = "torch"
    world_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # what an input pipeline needs to resume (e.g. shards)
    loss: float | None = None  # the loss of step `step` (log row `step`); None before the first step
    start_loss: float | None = None  # log row 1's loss: the reference of the divergence rule (train.divergence)

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
    protect: Path | None = None,
) -> None:
    """Collective: every rank's RNG state is gathered, rank 0 writes, all wait (barrier) until it is on disk.

    Every rank first checks its model and optimizer state for NaN/Inf; the verdicts travel with the RNG states, so
    all ranks agree to raise :class:`NonFiniteLoss` (nothing written, the previous checkpoints kept). ``protect``:
    a step checkpoint that ``keep`` must not prune (the newest one the run could continue from)."""
    opt = optimizer.state_dict()
    bad = nonfinite_tensors([*model.state_dict().items(), *optimizer_tensors(opt)])
    gathered = all_gather_objects({"rng": rng_state(), "nonfinite": bad})
    bad = sorted({n for g in gathered for n in g["nonfinite"]})
    if bad:
        raise NonFiniteLoss(
            f"non-finite model/optimizer state at step {state.step} ({len(bad)} tensors, e.g. {', '.join(bad[:3])}); "
            f"checkpoint {name or f'step_{state.step:08d}'} not written; {last_good_note(out)}")
    rngs = [g["rng"] for g in gathered]
    if info.is_main:
        blob = {**state.to_dict(), "optimizer": opt, "rng": rngs[0], "rng_ranks": rngs,
                "scaler": scaler.state_dict() if scaler.is_enabled() else {}}
        save_checkpoint(out, state.step, model, blob, keep=keep, name=name, protect=protect)
    barrier()


def restore_training(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    info: DistInfo,
    device: torch.device,
    log: Callable[..., None] = print,
) -> TrainerState:
    """Load a checkpoint written by :func:`save_training` into the live objects; returns its state. This rank's
    RNG states are restored (rank 0's when the process count changed). A checkpoint made for another model is a
    :class:`~maskspec_fast.serialization.CheckpointError` naming the differing config fields."""
    path = Path(path)
    blob = load_trainer_state(path)
    load_checkpoint_weights(path, model, device, log)
    try:
        optimizer.load_state_dict(blob["optimizer"])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:  # e.g. other parameter groups (--layer-decay)
        raise CheckpointError(f"{path / 'trainer.pt'}: its optimizer state does not fit this run "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from e
    if blob.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(blob["scaler"])
    ranks = blob.get("rng_ranks")
    set_rng_state(ranks[info.rank] if ranks and len(ranks) == info.world_size else blob["rng"])
    return TrainerState.from_dict(blob)


def load_checkpoint_weights(path: Path, model: torch.nn.Module, device: torch.device | str,
                            log: Callable[..., None] = print) -> None:
    """Load the weights of a complete checkpoint written by :func:`save_training` (``checkpoints/step_*``,
    ``checkpoints/best``) into ``model``, checked: the ``COMPLETE`` marker, the same model config
    (:func:`check_same_model`), a readable safetensors file, and every tensor's name, shape and kind
    (:func:`~maskspec_fast.serialization.check_state_dict`); each failure is a
    :class:`~maskspec_fast.serialization.CheckpointError` naming the file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (missing {COMPLETE} marker; the save was "
                              "interrupted?)")
    check_same_model(path, model, log)
    weights = path / "model.safetensors"
    try:
        state = load_file(str(weights), device=str(device))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({' '.join(str(e).split())[:300]})") from e
    check_state_dict(weights, state, model.state_dict())
    model.load_state_dict(state, strict=True)


def check_same_model(path: Path, model: torch.nn.Module, log: Callable[..., None] = print) -> None:
    """Refuse to resume ``model`` from a checkpoint made for another model: a one-line
    :class:`~maskspec_fast.serialization.CheckpointError` naming each differing config field (checkpoint vs this
    run). Changes in :data:`RESUMABLE_CHANGES` are allowed with a warning."""
    own: ModelConfig | None = getattr(model, "config", None)
    if own is None:
        return
    cfg_file = Path(path) / "config.json"
    meta = read_meta(cfg_file)
    saved = config_from_meta(cfg_file, meta)
    kind = "classifier" if hasattr(model, "num_classes") else "pretrain"
    diffs = [f"model_type {meta['model_type']} vs {kind}"] if meta["model_type"] != kind else []
    if kind == "classifier" and meta["model_type"] == kind and meta["num_classes"] != model.num_classes:
        diffs.append(f"num_classes {meta['num_classes']} vs {model.num_classes}")
    soft = []
    for f in dataclasses.fields(ModelConfig):
        a, b = getattr(saved, f.name), getattr(own, f.name)
        if a != b:
            (soft if f.name in RESUMABLE_CHANGES else diffs).append(f"{f.name} {a} vs {b}")
    if diffs:
        raise CheckpointError(f"{cfg_file}: the checkpoint's model differs from the one this run asks for "
                              f"(checkpoint vs this run: {', '.join(diffs)}); resume with the same model options, "
                              "or use another --out")
    soft = [d for d in soft if not d.startswith("preset ")]  # a label only; the sizes are compared above
    if soft:
        log(f"warning: resuming with changed training settings (checkpoint vs this run: {', '.join(soft)})")


__all__ = ["NonFiniteLoss", "TrainerState", "check_same_model", "last_good_note", "restore_training",
           "save_training"]
