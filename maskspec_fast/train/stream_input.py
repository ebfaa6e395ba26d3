"""The trainer's input for streaming sources (``webdataset:`` shards, :class:`~maskspec_fast.data.stream.ShardStream`):
the interface of :class:`~maskspec_fast.train.inputs.TorchInput` (``epoch(epoch, start_batch)``, ``spec``,
``replaced``, ``len``), waveforms from DataLoader workers, log-mel on the device.

Each worker builds whole batches (``source.iter_batches``: worker w of W takes batches start + w, start + w + W,
...), and the DataLoader (``batch_size=None``) yields them round-robin, i.e. in batch order: the batches of an
epoch depend on ``(seed, epoch, rank, world_size)`` only, not on the number of workers. Resume at
``start_batch`` is exact and costs no decoding (the order is computed from the shard index).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..frontend.logmel import LogMel
from .inputs import to_spec


class _EpochBatches(IterableDataset):
    """One epoch's local batches ``[start, stop)`` of one rank, split over the DataLoader's workers."""

    def __init__(self, source, epoch: int, local_batch: int, start: int, stop: int, rank: int, world_size: int):
        self.source, self.epoch, self.local_batch = source, epoch, local_batch
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.source.iter_batches(self.epoch, self.local_batch, self.start, self.stop, self.rank,
                                        self.world_size, worker, workers)


class StreamInput:
    """Batches of a streaming source for one rank (module doc); same interface as ``TorchInput``."""

    name = "stream"

    def __init__(
        self,
        source,
        frontend: LogMel,
        local_batch: int,
        batches_per_epoch: int,
        *,
        workers: int,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ):
        have = source.batches_per_rank(local_batch, world_size)
        if batches_per_epoch > have:
            raise ValueError(f"{batches_per_epoch} batches per epoch asked, the source has {have} of {local_batch}")
        self.source, self.frontend, self.device = source, frontend, device
        self.local_batch, self.batches_per_epoch = local_batch, batches_per_epoch
        self.workers, self.seed, self.rank, self.world_size = workers, seed, rank, world_size
        self._pending: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        if start_batch >= self.batches_per_epoch:
            return
        if start_batch == 0 and self.rank == 0:
            # problems the shard scan found (skip mode: a missing shard, a truncated tar, an unknown label) are
            # reported with the first batch of every epoch, as a bad clip is each time it is drawn; a run resumed
            # mid-epoch reported them before it stopped, so the counts match an uninterrupted run
            self._pending = list(getattr(self.source, "bad", []))
        batches = _EpochBatches(self.source, epoch, self.local_batch, start_batch, self.batches_per_epoch,
                                self.rank, self.world_size)
        workers = min(self.workers, self.batches_per_epoch - start_batch)
        loader = DataLoader(batches, batch_size=None, num_workers=workers, persistent_workers=False)
        yield from loader

    def spec(self, batch: dict[str, Any]) -> torch.Tensor:
        return to_spec(self.frontend, batch["wave"], self.device)

    def replaced(self, batch: dict[str, Any]) -> list[tuple[str, str]]:
        new, self._pending = self._pending + list(batch.get("replaced", [])), []
        return new


__all__ = ["StreamInput"]
