"""Evaluation metrics: accuracy (single-label) and mean average precision (multi-label)."""
from __future__ import annotations

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy. logits ``(N, C)``, labels ``(N,)`` int."""
    if logits.shape[0] == 0:
        return float("nan")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AP of one class: mean over positives of precision at each positive's rank. scores/targets ``(N,)``."""
    order = torch.argsort(scores, descending=True)
    t = targets[order].float()
    npos = t.sum()
    if npos == 0:
        return float("nan")
    hits = torch.cumsum(t, 0)
    precision = hits / torch.arange(1, len(t) + 1, dtype=torch.float32)
    return (precision * t).sum().item() / npos.item()


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """mAP over classes with at least one positive. scores/targets ``(N, C)``."""
    aps = [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]
    aps = [a for a in aps if a == a]
    return float(sum(aps) / len(aps)) if aps else float("nan")
