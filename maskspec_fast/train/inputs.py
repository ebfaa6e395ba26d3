"""The trainer's inputs (:class:`~maskspec_fast.data.interfaces.Input`), one module:

* :class:`TorchInput`: a map-style waveform source through a DataLoader, log-mel (:class:`LogMel`) on the device;
* :class:`TensorInput`: a map-style log-mel source (:class:`~maskspec_fast.data.tensors.SpecTensors`), same order;
* :class:`DaliInput`: a file-based map-style source decoded and turned into log-mel by DALI;
* :class:`StreamInput`: a streaming source (shards), ordered and split by the source.

Each yields this rank's local batches of one epoch from a given position, and stops after ``batches_per_epoch``
batches (``len(source) // global_batch``, the same for every world size, so ranks take equal step counts and one
process sees exactly the batches a multi-process run sees). :func:`make_input` picks one from what the source
declares (``streaming``, ``provides``, ``files()``), never from what it happens to have.

Resume: the torch path starts mid-epoch exactly (the sampler skips what was used; random crops are a function of
``(seed, epoch, index)``). The DALI path's order is a function of ``(seed, epoch)`` too, but its pipeline can only
start at an epoch's beginning, so a resumed run decodes and discards the batches of the current epoch that were
already used (cost: that many batches of decoding; the crops come from DALI's seeded per-sample generators).
The streaming path's order is computed from the shard index, so it resumes exactly without decoding.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..data.carry import CarryErrors, carried_iter, collate_or_failure, raise_failure
from ..data.interfaces import Input, MapSource, Source, StreamSource
from ..frontend.logmel import LogMel
from .sampler import ResumableSampler


def make_loader(dataset, sampler: ResumableSampler, batch_size: int, workers: int, seed: int, epoch: int):
    """A DataLoader over ``dataset`` whose documented data errors reach the caller with their type and message
    (:mod:`maskspec_fast.data.carry`: pass each batch through ``raise_failure``)."""
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)  # worker seeds depend on (seed, epoch) only
    return DataLoader(
        CarryErrors(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_or_failure,
        drop_last=True,
        generator=g,
        persistent_workers=False,
    )


def batch_spec(batch: dict[str, Any], provides: str, frontend: LogMel, device: torch.device) -> torch.Tensor:
    """A collated batch's log-mel ``(B, 128, T)`` on ``device``: ``frontend(wave (B, N))`` for waveform sources,
    the stored ``spec`` for log-mel sources (``provides`` as the source declares)."""
    if provides == "spec":
        return batch["spec"].to(device, non_blocking=True)
    return frontend(batch["wave"].to(device, non_blocking=True))


class TorchInput:
    """Clips of a map-style source from a ``torch.utils.data.DataLoader`` (``workers`` processes) in the seeded
    order of :class:`ResumableSampler` (class-balanced draws with ``weights``), log-mel on the device."""

    name = "torch"

    def __init__(
        self,
        dataset: MapSource,
        frontend: LogMel,
        local_batch: int,
        batches_per_epoch: int,
        *,
        workers: int,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
        weights: torch.Tensor | None = None,
    ):
        self.dataset, self.frontend, self.device = dataset, frontend, device
        self.local_batch, self.batches_per_epoch = local_batch, batches_per_epoch
        self.workers, self.seed = workers, seed
        self.sampler = ResumableSampler(len(dataset), seed=seed, shuffle=True, rank=rank, world_size=world_size,
                                        weights=weights)

    def epoch(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        self.sampler.set_epoch(epoch, skip=start_batch * self.local_batch)
        self.dataset.set_epoch(epoch)  # fresh random crops per epoch, independent of the worker count
        loader = make_loader(self.dataset, self.sampler, self.local_batch, self.workers, self.seed, epoch)
        for i, batch in enumerate(loader):
            if start_batch + i >= self.batches_per_epoch:
                break
            yield raise_failure(batch)

    def spec(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch_spec(batch, "wave", self.frontend, self.device)

    def replaced(self, batch: dict[str, Any]) -> list[tuple[str, str]]:
        return list(batch["replaced"])


class TensorInput(TorchInput):
    """Precomputed log-mel clips (a source with ``provides == "spec"``): the order, batches and resume of
    :class:`TorchInput`, no front end at step time."""

    name = "tensor"

    def spec(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch_spec(batch, "spec", self.frontend, self.device)


class DaliInput:
    """Files decoded and turned into log-mel by DALI (CPU backend, or GPU operators on CUDA).

    Each rank reads its share of the epoch's order (:mod:`maskspec_fast.data.order`, as the torch path does), so
    the union of the ranks' batches is the one-process batch; each epoch covers the data set once.
    """

    name = "dali"

    def __init__(
        self,
        dataset: MapSource,
        local_batch: int,
        batches_per_epoch: int,
        *,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
        skip_bad_files: bool,
        workers: int,
        fmin_jitter: float = 0.0,
        fmax_jitter: float = 0.0,
    ):
        from ..data.dali_loader import DaliAudioLoader

        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # DALI's GPU operators run on the current device
        self.loader = DaliAudioLoader.from_dataset(
            dataset,
            local_batch,
            clip_seconds=dataset.clip_seconds,
            train=True,
            seed=seed,
            shard_id=rank,
            num_shards=world_size,
            device="cuda" if device.type == "cuda" else "cpu",
            num_threads=max(1, workers),
            skip_bad_files=skip_bad_files,
            drop_last=True,
            fmin_jitter=fmin_jitter,
            fmax_jitter=fmax_jitter,
        )
        self.batches_per_epoch = batches_per_epoch
        self._reported = len(self.loader.skipped)
        self._pending = list(self.loader.skipped)  # files rejected by the up-front header check

    def epoch(self, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        self.loader.set_epoch(epoch)
        for i, batch in enumerate(self.loader):
            if i >= self.batches_per_epoch:
                break
            if i < start_batch:
                continue  # resume: replay up to the saved position (decoded and discarded)
            yield batch

    def spec(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["spec"]

    def replaced(self, batch: dict[str, Any]) -> list[tuple[str, str]]:
        new = self._pending + list(self.loader.skipped[self._reported :])
        self._pending, self._reported = [], len(self.loader.skipped)
        return new


class _EpochBatches(IterableDataset):
    """One epoch's local batches ``[start, stop)`` of one rank of a streaming source, split over DataLoader workers."""

    def __init__(self, source: StreamSource, epoch: int, local_batch: int, start: int, stop: int, rank: int,
                 world_size: int):
        self.source, self.epoch, self.local_batch = source, epoch, local_batch
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return carried_iter(lambda: self.source.iter_batches(self.epoch, self.local_batch, self.start, self.stop,
                                                             self.rank, self.world_size, worker, workers))


class StreamInput:
    """Batches of a streaming source for one rank, waveforms from DataLoader workers, log-mel on the device.

    Each worker builds whole batches (``source.iter_batches``: worker w of W takes batches start + w,
    start + w + W, ...), and the DataLoader (``batch_size=None``) yields them round-robin, i.e. in batch order: the
    batches of an epoch depend on ``(seed, epoch, rank, world_size)`` only, not on the number of workers. Resume at
    ``start_batch`` is exact and costs no decoding (the order is computed from the shard index).
    """

    name = "stream"

    def __init__(
        self,
        source: StreamSource,
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
            self._pending = self.source.problems()
        batches = _EpochBatches(self.source, epoch, self.local_batch, start_batch, self.batches_per_epoch,
                                self.rank, self.world_size)
        workers = min(self.workers, self.batches_per_epoch - start_batch)
        loader = DataLoader(batches, batch_size=None, num_workers=workers, persistent_workers=False)
        for batch in loader:
            yield raise_failure(batch)

    def spec(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch_spec(batch, "wave", self.frontend, self.device)

    def replaced(self, batch: dict[str, Any]) -> list[tuple[str, str]]:
        new, self._pending = self._pending + list(batch["replaced"]), []
        return new


def make_input(task_name: str, source: Source, config, frontend: LogMel, device: torch.device, info,
               local_batch: int, batches_per_epoch: int, log: Callable[..., None]) -> Input:
    """The input for ``source`` and ``config.frontend`` (see :func:`choose_frontend`), reported through ``log``.

    ``config``: a :class:`~maskspec_fast.train.config.TrainConfig`; ``info``: this process's ``DistInfo``.
    Streaming sources -> :class:`StreamInput`; log-mel sources -> :class:`TensorInput`; else torch or DALI.
    """
    if source.streaming:
        if config.balanced_sampling:
            raise ValueError("--balanced-sampling needs a map-style data set; streaming shards are read once per "
                             "epoch in shard order (prepare a manifest, or train on hdf5:/hf: for weighted draws)")
        if config.frontend == "dali":
            raise ValueError("--frontend dali reads files; streaming shards use --frontend torch (or auto)")
        log(f"front end: torch, streaming {len(source)} clips")
        return StreamInput(source, frontend, local_batch, batches_per_epoch, workers=config.workers,
                           seed=config.seed, rank=info.rank, world_size=info.world_size, device=device)
    weights = source.sample_weights() if config.balanced_sampling else None
    common = dict(workers=config.workers, seed=config.seed, rank=info.rank, world_size=info.world_size,
                  device=device, weights=weights)
    if source.provides == "spec":
        if config.frontend == "dali":
            raise ValueError("--frontend dali decodes audio files; this source holds log-mel spectrograms")
        log("front end: none (precomputed log-mel)")
        return TensorInput(source, frontend, local_batch, batches_per_epoch, **common)
    name, why = choose_frontend(config.frontend, source)
    log(f"front end: {name} ({why})")
    if name == "dali":
        if config.balanced_sampling:
            raise ValueError("--balanced-sampling is supported with --frontend torch only (DALI reads each "
                             "file once per epoch in its own order)")
        jitter = task_name == "pretrain"
        return DaliInput(source, local_batch, batches_per_epoch, seed=config.seed, rank=info.rank,
                         world_size=info.world_size, device=device, skip_bad_files=config.skip_bad_files,
                         workers=config.workers, fmin_jitter=frontend.fmin_jitter if jitter else 0.0,
                         fmax_jitter=frontend.fmax_jitter if jitter else 0.0)
    return TorchInput(source, frontend, local_batch, batches_per_epoch, **common)


def choose_frontend(requested: str, dataset: MapSource) -> tuple[str, str]:
    """``(name, reason)`` for ``--frontend torch|dali|auto``: auto takes DALI when it imports and the data set is
    file-based (``dataset.files()`` is not None), else torch. ``dali`` raises ValueError (with the reason) when it
    cannot run."""
    from ..frontend.dali import dali_available

    if requested == "torch":  # the default of --frontend and of TrainConfig.frontend
        return "torch", "the default --frontend torch; --frontend auto or dali to use DALI"
    ok, why = dali_available()
    files = dataset.files() is not None
    if requested == "dali":
        if not ok:
            raise ValueError(f"--frontend dali: {why}")
        if not files:
            raise ValueError(f"--frontend dali needs a file-based data set; {type(dataset).__name__} is generated "
                             "in Python (use --frontend torch or auto)")
        return "dali", f"asked for (--frontend dali; {why})"
    if requested != "auto":
        raise ValueError(f"--frontend must be torch, dali or auto, got {requested!r}")
    if not ok:
        return "torch", f"auto: DALI not usable ({why})"
    if not files:
        return "torch", f"auto: {type(dataset).__name__} is generated in Python, DALI reads only files"
    return "dali", f"auto: {why} and a file-based data set"


__all__ = ["DaliInput", "StreamInput", "TensorInput", "TorchInput", "batch_spec", "choose_frontend", "make_input",
           "make_loader"]
