"""``SpecTensors``: precomputed log-mel spectrograms as a map-style source (``provides == "spec"``).

What the evaluation harness fine-tunes on (log-mel computed once per clip instead of at every step). The log-mel
is the model front end's (:class:`~maskspec_fast.frontend.logmel.LogMel`, whose output does not depend on what
else is in the batch), so a run on ``SpecTensors`` of a set's clips and a run on the set itself see the same
numbers.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..frontend.constants import HOP_LENGTH, SAMPLE_RATE
from .base import AudioDataset


class SpecTensors(AudioDataset):
    """Log-mel clips ``specs (N, n_mels, T)`` with labels ``(N,)`` int64 (-1: unlabeled) or ``(N, C)`` multi-hot.

    Samples are ``{"spec": (n_mels, T), "label", "index", "path": "", "replaced": "", "replaced_reason": ""}``;
    ``clip_seconds = T * hop / sample_rate``. Nothing is cropped or decoded, so nothing can fail to load.
    """

    provides = "spec"

    def __init__(self, specs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str] | None = None,
                 num_classes: int | None = None, seed: int = 0):
        if specs.dim() != 3:
            raise ValueError(f"specs must be (N, n_mels, T), got shape {tuple(specs.shape)}")
        if labels.shape[0] != specs.shape[0] or labels.dim() not in (1, 2):
            raise ValueError(f"labels must be (N,) or (N, C) with N = {specs.shape[0]}, got {tuple(labels.shape)}")
        multilabel = labels.dim() == 2
        if class_names is None:
            c = num_classes if num_classes is not None else (
                labels.shape[1] if multilabel else int(labels.max()) + 1 if labels.numel() else 0)
            class_names = [str(i) for i in range(c)]
        super().__init__(clip_seconds=specs.shape[-1] * HOP_LENGTH / SAMPLE_RATE, seed=seed)
        self.specs = specs.float().contiguous()
        self._labels = labels.float() if multilabel else labels.long()
        self.class_names, self.multilabel = list(class_names), multilabel

    def __len__(self) -> int:
        return self.specs.shape[0]

    def labels(self) -> torch.Tensor:
        return self._labels

    def _label(self, index: int) -> int | list[int]:
        row = self._labels[index]
        return row.nonzero().flatten().tolist() if self.multilabel else int(row)

    def _sample(self, index: int) -> dict[str, Any]:
        return {"spec": self.specs[index], "label": self._labels[index].clone(), "path": "", "index": int(index),
                "replaced": "", "replaced_reason": ""}


__all__ = ["SpecTensors"]
