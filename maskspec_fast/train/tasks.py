"""What differs between pre-training and fine-tuning: the model, its loss, and its param groups."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import Classifier, Model
from .schedule import param_groups


class PretrainTask:
    """MaskSpec pre-training: ``loss = model(spec, mask_ratio)``; labels are ignored."""

    name = "pretrain"

    def __init__(self, model: Model, mask_ratio: float, masks_per_clip: int = 1):
        self.model, self.mask_ratio, self.masks_per_clip = model, mask_ratio, masks_per_clip

    def loss(self, spec: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        loss, _, _ = self.model(spec, mask_ratio=self.mask_ratio, masks_per_clip=self.masks_per_clip)
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
        _, pred, mask = self.model(spec, mask_ratio=self.mask_ratio, noise=noise)
        save_reconstructions(spec, pred, mask, path, self.model.config.patch_size, self.model.config.norm_pix_loss, title)
        self.model.train(was_training)


class FinetuneTask:
    """Classification: cross-entropy (single-label) or BCE (multi-label), both with label smoothing."""

    name = "finetune"

    def __init__(self, model: Classifier, multilabel: bool, label_smoothing: float = 0.1, layer_decay: float = 0.75):
        self.model, self.multilabel = model, multilabel
        self.label_smoothing, self.layer_decay = label_smoothing, layer_decay

    def loss(self, spec: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.model(spec).float()
        return classification_loss(logits, labels, self.multilabel, self.label_smoothing)

    def groups(self, weight_decay: float) -> list[dict]:
        return param_groups(self.model, weight_decay, layer_decay=self.layer_decay)


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


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model
