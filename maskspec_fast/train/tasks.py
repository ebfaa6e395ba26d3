"""What differs between pre-training and fine-tuning: the model, its loss, its param groups, and the per-sample
randomness each draws for a step.

:class:`Task` is the protocol the trainer (:mod:`maskspec_fast.train.loop`) runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import Classifier, Model
from .augment import (
    MaskParams,
    apply_gain,
    apply_mixup,
    apply_spec_augment,
    apply_time_roll,
    draw_gain,
    draw_mixup_lambda,
    draw_spec_augment,
    draw_time_roll,
    scaled_time_mask,
    soft_targets,
)
from .schedule import param_groups


class Task(Protocol):
    """What the trainer needs of a task.

    * ``name``: ``"pretrain"`` or ``"finetune"`` (progress bar; the front end jitters mel bands in pre-training).
    * ``model``: the bare module (saved, pictured, grouped into the optimizer).
    * ``draw(gen, global_batch, rows, spec) -> dict[str, Tensor]``: per-sample random inputs for the rows of the
      global batch that this rank holds (leading dim = local batch), drawn from ``gen`` (seeded by ``(seed,
      step)``). Drawing for the global batch and keeping rows is what makes ranks x local batch == one process x
      global batch.
    * ``loss(net, spec, labels, **extras)``: the mean loss of one micro-batch (extras sliced like ``spec``) run
      through ``net`` (``model`` itself, or its ``DistributedDataParallel`` wrapper under torchrun).
    * ``groups(weight_decay)``: AdamW parameter groups.
    * ``pictures``: whether ``picture(spec, path, title)`` draws something worth saving during training.
    """

    name: str
    model: nn.Module
    pictures: bool

    def draw(self, gen: torch.Generator, global_batch: int, rows: torch.Tensor, spec: torch.Tensor) -> dict: ...

    def loss(self, net: nn.Module, spec: torch.Tensor, labels: torch.Tensor, **extras) -> torch.Tensor: ...

    def groups(self, weight_decay: float) -> list[dict]: ...

    def picture(self, spec: torch.Tensor, path: Path, title: str = "") -> None: ...


class PretrainTask:
    """MaskSpec pre-training: ``loss = model(spec, noise=noise)`` with the model config's mask ratio (the one
    place it is set, so a saved model trains on as it was configured); labels are ignored."""

    name = "pretrain"
    pictures = True

    def __init__(self, model: Model, masks_per_clip: int = 1):
        if masks_per_clip < 1:
            raise ValueError(f"masks_per_clip must be >= 1, got {masks_per_clip}")
        self.model, self.masks_per_clip = model, masks_per_clip

    def draw(self, gen: torch.Generator, global_batch: int, rows: torch.Tensor, spec: torch.Tensor) -> dict:
        """Masking noise ``(B_local, M, L)`` (rows of the global ``(B, M, L)`` draw); L from the spec's grid."""
        p = self.model.config.patch_size
        n = (spec.shape[-2] // p) * (spec.shape[-1] // p)
        noise = torch.rand(global_batch, self.masks_per_clip, n, generator=gen)[rows]
        return {"noise": noise.to(spec.device, non_blocking=True)}

    def loss(self, net: nn.Module, spec: torch.Tensor, labels: torch.Tensor | None,
             noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is not None:
            noise = noise.reshape(-1, noise.shape[-1])  # (B * M, L): rows b*M .. b*M + M-1 belong to clip b
        # return_pred=False: the loss is all a step needs, so the fused path scores masked tokens only
        loss, _, _ = net(spec, masks_per_clip=self.masks_per_clip, noise=noise, return_pred=False)
        return loss

    def groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self.model, weight_decay)

    @torch.no_grad()
    def picture(self, spec: torch.Tensor, path, title: str = "") -> None:
        """Save input | masked | reconstruction for a few clips (fixed mask seed so pictures compare over time)."""
        from ..viz import save_reconstructions

        was_training = self.model.training
        self.model.eval()
        g = torch.Generator().manual_seed(0)
        noise = torch.rand(spec.shape[0], self.model.config.num_patches, generator=g).to(spec.device)
        _, pred, mask = self.model(spec, noise=noise)
        save_reconstructions(spec, pred, mask, path, self.model.config.patch_size, self.model.config.norm_pix_loss, title)
        self.model.train(was_training)


class FinetuneTask:
    """Classification: cross-entropy (single-label) or BCE (multi-label), both with label smoothing; optional
    random circular time roll per clip (``time_roll``, applied first), a random level / spectral tilt per clip
    (``gain_db`` / ``tilt_db``, :func:`~maskspec_fast.train.augment.apply_gain`), SpecAugment (one frequency band up to
    ``freq_mask`` bins and one time span up to ``time_mask`` frames per 10 s, scaled to the clip length) and
    mixup (``mixup_alpha > 0``, soft targets) on the log-mel batch.

    The constructor's defaults are the neutral settings (no smoothing, no layer decay, no augmentation); the
    fine-tuning defaults live in :class:`~maskspec_fast.train.recipe.FinetuneRecipe` (:meth:`from_recipe`)."""

    name = "finetune"
    pictures = False

    def __init__(
        self,
        model: Classifier,
        multilabel: bool,
        label_smoothing: float = 0.0,
        layer_decay: float = 1.0,
        freq_mask: int = 0,
        time_mask: int = 0,
        mixup_alpha: float = 0.0,
        time_roll: bool = False,
        gain_db: float = 0.0,
        tilt_db: float = 0.0,
    ):
        self.model, self.multilabel = model, multilabel
        self.label_smoothing, self.layer_decay = label_smoothing, layer_decay
        self.freq_mask, self.time_mask, self.mixup_alpha = freq_mask, time_mask, mixup_alpha
        self.time_roll = time_roll
        self.gain_db, self.tilt_db = gain_db, tilt_db

    @classmethod
    def from_recipe(cls, model: Classifier, multilabel: bool, recipe) -> FinetuneTask:
        """The task with a :class:`~maskspec_fast.train.recipe.FinetuneRecipe`'s loss and augmentation settings."""
        return cls(model, multilabel, recipe.label_smoothing, recipe.layer_decay, freq_mask=recipe.freq_mask,
                   time_mask=recipe.time_mask, mixup_alpha=recipe.mixup, time_roll=recipe.time_roll,
                   gain_db=recipe.gain_db, tilt_db=recipe.tilt_db)

    def draw(self, gen: torch.Generator, global_batch: int, rows: torch.Tensor, spec: torch.Tensor) -> dict:
        out: dict[str, torch.Tensor] = {}
        if self.time_roll:
            out["roll"] = draw_time_roll(gen, global_batch, spec.shape[-1])[rows]
        if self.gain_db > 0 or self.tilt_db > 0:
            out["gain"] = draw_gain(gen, global_batch, self.gain_db, self.tilt_db)[rows]
        if self.freq_mask > 0 or self.time_mask > 0:
            f, t = spec.shape[-2], spec.shape[-1]
            p = draw_spec_augment(gen, global_batch, f, t, self.freq_mask, scaled_time_mask(self.time_mask, t))
            p = p.rows(rows)
            out.update(f_start=p.f_start, f_width=p.f_width, t_start=p.t_start, t_width=p.t_width)
        if self.mixup_alpha > 0:
            out["lam"] = draw_mixup_lambda(gen, global_batch, self.mixup_alpha)[rows]
        return out

    def augment(self, spec: torch.Tensor, labels: torch.Tensor, **extras) -> tuple[torch.Tensor, torch.Tensor]:
        """Time roll, level/tilt, SpecAugment, then mixup (PaSST's order: per-clip changes, then clips are mixed)."""
        if "roll" in extras:
            spec = apply_time_roll(spec, extras["roll"])
        if "gain" in extras:
            spec = apply_gain(spec, extras["gain"])
        if "f_start" in extras:
            p = MaskParams(extras["f_start"], extras["f_width"], extras["t_start"], extras["t_width"])
            spec = apply_spec_augment(spec, p)
        if "lam" in extras:
            spec, labels = apply_mixup(spec, soft_targets(labels, self.model.num_classes), extras["lam"])
        return spec, labels

    def loss(self, net: nn.Module, spec: torch.Tensor, labels: torch.Tensor, **extras) -> torch.Tensor:
        spec, labels = self.augment(spec, labels, **extras)
        logits = net(spec).float()
        return classification_loss(logits, labels, self.multilabel, self.label_smoothing)

    def groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self.model, weight_decay, layer_decay=self.layer_decay)

    def picture(self, spec: torch.Tensor, path: Path, title: str = "") -> None:
        """Nothing to draw for a classifier during training (``pictures`` is False)."""


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool, smoothing: float) -> torch.Tensor:
    """CE for integer labels ``(B,)`` or soft targets ``(B, C)`` (mixup); BCE with smoothing for multi-label."""
    if multilabel:
        target = labels.float() * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target)
    if labels.dim() == 2:  # soft targets
        c = logits.shape[1]
        target = labels.float() * (1 - smoothing) + smoothing / c
        return torch.sum(-target * F.log_softmax(logits, dim=1), dim=1).mean()
    return F.cross_entropy(logits, labels, label_smoothing=smoothing)

