"""Labels as tensors and the class-balanced weights computed from them (any source, any subset)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import DatasetError


def decide_multilabel(class_counts_per_clip: Sequence[int], multilabel: bool | None, what: str) -> bool:
    """The one rule every labelled kind follows (manifests, ``.json``/``.cls`` shards, ``hdf5:``, ``hf:``): a set is
    single-label (cross-entropy, accuracy) when every clip has exactly one class, else multi-label (BCE, mAP);
    ``multilabel=True|False`` (the spec option ``:multilabel=``) says it instead. ``class_counts_per_clip``: the
    number of distinct classes of each clip ``(N,)``. An unlabelled set (no clip has a class) is multi-label unless
    told otherwise (there is nothing to decide on).

    Raises:
        DatasetError: ``multilabel=False`` while a clip has no class or several (names the first, via ``what``).
    """
    if multilabel is True:
        return True
    counts = np.asarray(class_counts_per_clip, dtype=np.int64).reshape(-1)
    if not counts.any():
        return multilabel is None
    off = np.flatnonzero(counts != 1)
    if multilabel is False and off.size:
        raise DatasetError(f"{what}: multilabel=false, but clip {int(off[0])} has {int(counts[off[0]])} classes "
                           "(a single-label set needs exactly one per clip)")
    return bool(off.size)


def labels_tensor(labels: Sequence[int | list[int]], num_classes: int, multilabel: bool) -> torch.Tensor:
    """Per-clip labels -> ``(N,)`` int64 (-1: unlabeled) or, when ``multilabel``, ``(N, C)`` float32 multi-hot."""
    if not multilabel:
        return torch.tensor([int(x) for x in labels], dtype=torch.long)
    out = torch.zeros(len(labels), num_classes, dtype=torch.float32)
    for i, ls in enumerate(labels):
        ls = [ls] if isinstance(ls, int) else list(ls)
        out[i, [c for c in ls if c >= 0]] = 1.0
    return out


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Clips per class ``(C,)`` int64 from ``(N,)`` labels (-1 ignored) or ``(N, C)`` multi-hot labels."""
    if labels.dim() == 2:
        return (labels > 0).sum(0).long()
    known = labels[labels >= 0]
    return torch.bincount(known, minlength=num_classes)[:num_classes].long()


def class_weights(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Inverse-frequency class weights ``(C,)`` float64: ``w_c = 1 / (count_c + smoothing)``, scaled so the
    classes present average 1; absent classes get 0."""
    counts = class_counts(labels, num_classes).double()
    w = torch.where(counts > 0, 1.0 / (counts + smoothing), torch.zeros_like(counts))
    present = counts > 0
    if present.any():
        w = w / w[present].mean()
    return w


def class_balanced_weights(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Class-balanced draw weights ``(N,)`` float64 for ``labels`` ``(N,)`` / ``(N, C)``:
    ``s_i = sum_{c in labels(i)} w_c`` (:func:`class_weights`); a clip without labels gets the smallest positive
    ``w_c``."""
    w = class_weights(labels, num_classes, smoothing)
    floor = float(w[w > 0].min()) if (w > 0).any() else 1.0
    if labels.dim() == 2:
        hot = (labels > 0).double()
        s = hot @ w
        return torch.where(hot.any(1), s, torch.full_like(s, floor))
    s = torch.full((labels.shape[0],), floor, dtype=torch.float64)
    known = labels >= 0
    s[known] = w[labels[known]]
    return s


__all__ = ["class_balanced_weights", "class_counts", "class_weights", "decide_multilabel", "labels_tensor"]
