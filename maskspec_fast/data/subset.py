"""A subset of a source as a source of its own (see :mod:`maskspec_fast.data.interfaces`).

Everything the trainer reads of a subset is computed for its clips only: length, labels, class-balanced weights,
the file list DALI reads, a streaming subset's order, and the replacement of a bad clip in skip mode (taken from the
subset, never from the parent's other clips). Nothing is forwarded by attribute lookup. :class:`Subset` holds what
both kinds share; :class:`MapSubset` is the map-style one, ``data.stream.StreamSubset`` the streaming one.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .labels import class_balanced_weights


def as_ids(indices: Sequence[int] | torch.Tensor | np.ndarray, size: int, what: str) -> np.ndarray:
    """``indices`` as a sorted int64 array of distinct ids in ``[0, size)`` (ValueError otherwise)."""
    ids = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= size):
        raise ValueError(f"{what}: subset indices must lie in [0, {size}), got {ids.min()} .. {ids.max()}")
    out = np.unique(ids)
    if out.size != ids.size:
        raise ValueError(f"{what}: subset indices repeat ({ids.size - out.size} duplicates)")
    return out


class Subset:
    """The clips ``indices`` (ids of ``parent``, kept in increasing order) of a source, with the parent's label
    space. ``parent`` is a data set with ``sample(index, pool)`` (``AudioDataset`` and its kinds): a clip of the
    subset is the parent's clip, a bad one replaced from the subset's own ids."""

    def __init__(self, parent: Any, indices: Sequence[int] | torch.Tensor):
        self.parent = parent
        self.ids = as_ids(indices, len(parent), type(parent).__name__)
        self.provides = parent.provides
        self.clip_seconds, self.sample_rate = parent.clip_seconds, parent.sample_rate
        self.multilabel, self.class_names = parent.multilabel, list(parent.class_names)
        self.label_sources = parent.label_sources
        self._num_classes = parent.num_classes
        self._labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a subset of {n} clips")
        return self.parent.sample(int(self.ids[index]), pool=self.ids)

    def clip(self, index: int) -> dict[str, Any]:
        """Clip ``index`` as evaluation reads it (the parent's :meth:`~maskspec_fast.data.base.AudioDataset.clip`:
        never replaced)."""
        return self.parent.clip(int(self.ids[index]))

    def labels(self) -> torch.Tensor:
        if self._labels is None:
            self._labels = self.parent.labels()[torch.from_numpy(self.ids)]
        return self._labels

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Subset:
        """A subset of this subset: the same kind, over the parent's ids."""
        return type(self)(self.parent, self.ids[as_ids(indices, len(self), "subset")])

    def set_epoch(self, epoch: int) -> None:
        self.parent.set_epoch(epoch)  # crops are keyed by the parent's ids, so a clip crops alike in both

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} of {self.parent!r})"


class MapSubset(Subset, Dataset):
    """A :class:`Subset` of a map-style source (a ``MapSource`` itself)."""

    streaming = False

    def sample_weights(self, smoothing: float = 0.0) -> torch.Tensor:
        return class_balanced_weights(self.labels(), self.num_classes, smoothing)

    def files(self) -> list[tuple[str, Any]] | None:
        files = self.parent.files()
        return None if files is None else [files[int(i)] for i in self.ids]


__all__ = ["MapSubset", "Subset", "as_ids"]
