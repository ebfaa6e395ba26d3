"""Training input pipelines: the torch path (DataLoader of waveforms -> :class:`LogMel` on the device) and the
DALI path (:class:`~maskspec_fast.data.dali_loader.DaliAudioLoader`: files -> log-mel on the device).

Both yield this rank's local batches of one epoch from a given position, and stop after ``batches_per_epoch``
batches (``len(dataset) // global_batch``, the same for every world size, so ranks take equal step counts and one
process sees exactly the batches a multi-process run sees).

Resume: the torch path starts mid-epoch exactly (the sampler skips what was used; random crops are a function of
``(seed, epoch, index)``). The DALI path's order is a function of ``(seed, epoch)`` too, but its pipeline can only
start at an epoch's beginning, so a resumed run decodes and discards the batches of the current epoch that were
already used (cost: that many batches of decoding; the crops come from DALI's seeded per-sample generators).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..frontend.logmel import LogMel
from .sampler import ResumableSampler


def make_loader(dataset, sampler: ResumableSampler, batch_size: int, workers: int, seed: int, epoch: int):
    from ..data import collate

    g = torch.Generator().manual_seed(seed * 1000003 + epoch)  # worker seeds depend on (seed, epoch) only
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        generator=g,
        persistent_workers=False,
    )


def to_spec(frontend: LogMel, wave: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Waveform batch ``(B, N)`` -> log-mel ``(B, 128, T)`` on the training device."""
    return frontend(wave.to(device, non_blocking=True))


class TorchInput:
    """Waveforms from a ``torch.utils.data.DataLoader`` (``workers`` processes), log-mel on the device."""

    name = "torch"

    def __init__(
        self,
        dataset,
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
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # fresh random crops per epoch, independent of the worker count
        loader = make_loader(self.dataset, self.sampler, self.local_batch, self.workers, self.seed, epoch)
        for i, batch in enumerate(loader):
            if start_batch + i >= self.batches_per_epoch:
                break
            yield batch

    def spec(self, batch: dict[str, Any]) -> torch.Tensor:
        return to_spec(self.frontend, batch["wave"], self.device)

    def replaced(self, batch: dict[str, Any]) -> list[tuple[str, str]]:
        return list(batch.get("replaced", []))


class DaliInput:
    """Files decoded and turned into log-mel by DALI (CPU backend, or GPU operators on CUDA).

    Each rank reads its share of the epoch's order (:mod:`maskspec_fast.data.order`, as the torch path does), so
    the union of the ranks' batches is the one-process batch; each epoch covers the data set once.
    """

    name = "dali"

    def __init__(
        self,
        dataset,
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


def make_input(task_name: str, dataset, config, frontend: LogMel, device: torch.device, info, local_batch: int,
               batches_per_epoch: int, log) -> TorchInput | DaliInput:
    """The input pipeline ``config.frontend`` asks for (see :func:`choose_frontend`), reported through ``log``.

    ``config``: a :class:`~maskspec_fast.train.config.TrainConfig`; ``info``: this process's ``DistInfo``.
    """
    if getattr(dataset, "streaming", False):  # shard streams order and split themselves
        return _stream_input(dataset, config, frontend, device, info, local_batch, batches_per_epoch, log)
    name, why = choose_frontend(config.frontend, dataset)
    log(f"front end: {name} ({why})")
    weights = None
    if config.balanced_sampling:
        if not hasattr(dataset, "sample_weights"):
            raise ValueError(f"--balanced-sampling: {type(dataset).__name__} has no sample_weights()")
        if name == "dali":
            raise ValueError("--balanced-sampling is supported with --frontend torch only (DALI reads each "
                             "file once per epoch in its own order)")
        weights = dataset.sample_weights()
    if name == "dali":
        jitter = task_name == "pretrain"
        return DaliInput(dataset, local_batch, batches_per_epoch, seed=config.seed, rank=info.rank,
                         world_size=info.world_size, device=device, skip_bad_files=config.skip_bad_files,
                         workers=config.workers, fmin_jitter=frontend.fmin_jitter if jitter else 0.0,
                         fmax_jitter=frontend.fmax_jitter if jitter else 0.0)
    return TorchInput(dataset, frontend, local_batch, batches_per_epoch, workers=config.workers, seed=config.seed,
                      rank=info.rank, world_size=info.world_size, device=device, weights=weights)


def _stream_input(dataset, config, frontend: LogMel, device: torch.device, info, local_batch: int,
                  batches_per_epoch: int, log):
    """Streaming sources (``webdataset:``): order and rank/worker split from the source itself."""
    from .stream_input import StreamInput

    if config.balanced_sampling:
        raise ValueError("--balanced-sampling needs a map-style data set; streaming shards are read once per epoch "
                         "in shard order (prepare a manifest, or train on hdf5:/hf: for weighted draws)")
    if config.frontend == "dali":
        raise ValueError("--frontend dali reads files; streaming shards use --frontend torch (or auto)")
    log(f"front end: torch, streaming {len(dataset)} clips from {len(dataset.index.shards)} shard(s)")
    return StreamInput(dataset, frontend, local_batch, batches_per_epoch, workers=config.workers, seed=config.seed,
                       rank=info.rank, world_size=info.world_size, device=device)


def choose_frontend(requested: str, dataset) -> tuple[str, str]:
    """``(name, reason)`` for ``--frontend torch|dali|auto``: auto takes DALI when it imports and the data set is
    file-based (``dataset.items``), else torch. ``dali`` raises ValueError (with the reason) when it cannot run."""
    from ..frontend.dali import dali_available

    if requested == "torch":
        return "torch", "asked for (--frontend torch)"
    ok, why = dali_available()
    files = hasattr(dataset, "items")
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


__all__ = ["DaliInput", "TorchInput", "choose_frontend", "make_input", "make_loader", "to_spec"]
