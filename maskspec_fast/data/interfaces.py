"""The declared boundary between data and training: what a source offers and what the trainer's input gives.

Three protocols, in one place, so that nothing downstream has to ask an object what it can do:

* :class:`MapSource`: random access to ``N`` clips (folders, ESC-50, manifests, HDF5, Hugging Face sets, synthetic
  sounds, precomputed log-mel tensors). The trainer draws the order itself (a seeded sampler, optionally
  class-balanced by :meth:`MapSource.sample_weights`).
* :class:`StreamSource`: tar shards read in their own order (``webdataset:``, prepared shards). The source orders
  an epoch and splits it over ranks and workers itself (:meth:`StreamSource.iter_batches`).
* :class:`Input`: one rank's batches of one epoch from a resume position, and the log-mel of a batch on the
  training device. :mod:`maskspec_fast.train.inputs` has the four implementations (torch DataLoader, DALI,
  streamed shards, precomputed log-mel).

A sample is a dict (:mod:`maskspec_fast.data.base`): ``"wave" (n,)`` for waveform sources (``provides ==
"wave"``) or ``"spec" (n_mels, T)`` for log-mel sources (``provides == "spec"``), plus ``"label"``, ``"path"``,
``"index"``, ``"replaced"``, ``"replaced_reason"``.

**A subset is a source of its own.** :meth:`Source.subset` returns an object of the same protocol whose length,
labels, order, class-balanced weights and streaming split cover ONLY its clips; nothing is forwarded to the
parent by attribute lookup, so a validation split cannot leak into training (the training split's epochs hold
each of its clips once, and never a validation clip).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol, Union, runtime_checkable

import torch

Label = Union[int, list[int]]


@runtime_checkable
class Source(Protocol):
    """What every source declares.

    * ``streaming``: False for :class:`MapSource`, True for :class:`StreamSource` (the one switch the trainer reads).
    * ``provides``: ``"wave"`` (mono waveform at ``sample_rate``) or ``"spec"`` (log-mel ``(n_mels, T)``).
    * ``clip_seconds``, ``sample_rate``: the length and rate of every clip.
    * ``num_classes``, ``class_names``, ``multilabel``: the label space (0 classes: unlabeled).
    * ``label_sources``: where this kind of source looks for labels (named when none were found).
    * ``labels()``: every clip's label without decoding audio: ``(N,)`` int64 (-1: unlabeled) or ``(N, C)``
      float32 multi-hot.
    * ``subset(indices)``: the clips ``indices`` as a source of the same kind (module doc).
    * ``set_epoch(epoch)``: training crops are drawn from ``(seed, epoch, index)``.
    """

    streaming: bool
    provides: Literal["wave", "spec"]
    clip_seconds: float
    sample_rate: int
    multilabel: bool
    class_names: list[str]
    label_sources: Any

    @property
    def num_classes(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def labels(self) -> torch.Tensor: ...

    def subset(self, indices: Sequence[int] | torch.Tensor) -> Source: ...

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class MapSource(Source, Protocol):
    """Random access; the trainer orders it.

    * ``sample_weights()``: ``(N,)`` float64 class-balanced draw weights of THIS source's clips.
    * ``files()``: ``[(path, label)]`` when every clip is a file that other readers (DALI) can open, else None.
    * ``clip(index)``: clip ``index`` as evaluation reads it, never replaced by another clip (a bad file in skip
      mode comes back as a placeholder naming it in ``"omitted"``, left out of the score and reported).
    """

    def sample_weights(self, smoothing: float = 0.0) -> torch.Tensor: ...

    def clip(self, index: int) -> dict[str, Any]: ...

    def files(self) -> list[tuple[str, Label]] | None: ...


@runtime_checkable
class StreamSource(Source, Protocol):
    """Read in the source's own order (shards, a shuffle buffer), split over ranks and workers by the source.

    * ``problems()``: ``[(shard:member, problem)]`` found when indexing (skip mode), reported once per epoch.
    * ``batches_per_rank(local_batch, world_size)``: full local batches each rank gets per epoch.
    * ``iter_batches(epoch, local_batch, start, stop, rank, world_size, worker, num_workers)``: collated batches
      ``j = start + worker, start + worker + num_workers, ... < stop`` of this rank's epoch.
    """

    def problems(self) -> list[tuple[str, str]]: ...

    def batches_per_rank(self, local_batch: int, world_size: int = 1) -> int: ...

    def iter_batches(self, epoch: int, local_batch: int, start: int = 0, stop: int | None = None, rank: int = 0,
                     world_size: int = 1, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]: ...


@runtime_checkable
class Input(Protocol):
    """The trainer's input: one rank's batches and their log-mel.

    * ``name``: ``"torch"``, ``"dali"``, ``"stream"`` or ``"tensor"`` (recorded in checkpoints).
    * ``epoch(epoch, start_batch)``: this rank's batches ``start_batch ..`` of the epoch (dicts with ``"label"``).
    * ``spec(batch)``: the batch's log-mel ``(B, n_mels, T)`` on the training device.
    * ``replaced(batch)``: ``[(path, problem)]`` of bad files replaced in (or reported with) this batch.
    """

    name: str

    def epoch(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]: ...

    def spec(self, batch: dict[str, Any]) -> torch.Tensor: ...

    def replaced(self, batch: dict[str, Any]) -> list[tuple[str, str]]: ...


__all__ = ["Input", "Label", "MapSource", "Source", "StreamSource"]
