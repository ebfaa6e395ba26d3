"""Multi-process training with plain ``torchrun`` (DDP): NCCL on GPUs, Gloo on CPU.

``torchrun --nproc_per_node N -m maskspec_fast.train pretrain ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them. With one process
(no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) nothing is initialized and every helper here is a cheap no-op, so the
single-process path has no collective calls at all.

Conventions the training loop keeps (why they give the same result as one process with the same global batch):

* ``--batch-size`` is the GLOBAL batch B (samples per optimizer step over all ranks); rank r gets
  ``B / world`` samples, the rows ``r, r + w, r + 2w, ...`` of the global batch (``ResumableSampler`` strides the
  epoch's permutation the same way), so the union of the ranks' batches is the one-process batch.
* Per-sample randomness of the task (mask noise, SpecAugment) is drawn for the whole global batch from a
  generator seeded by ``(seed, step)`` and each rank keeps its rows; DDP averages gradients, which equals the
  one-process mean over the batch because every rank holds the same number of samples.
* What stays per process (so runs with mixup, drop path or patchout match one process in distribution, not
  number for number): mixup pairs clips within a process's micro-batch (as timm's ``Mixup`` does), and drop
  path / patchout draw inside the model from the global RNG, seeded per ``(seed, step, rank)``.
* The DALI front end takes the same epoch order and rank shares (:mod:`maskspec_fast.data.order`); every epoch
  reads each file once.
* Rank 0 alone writes logs, pictures and checkpoints; saves are collective (every rank's RNG state is gathered
  into the checkpoint) and end with a barrier, so no rank runs ahead of a checkpoint being written.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (only when ``WORLD_SIZE > 1``).

    ``device_type`` ``"cuda"`` selects NCCL and binds this process to ``cuda:LOCAL_RANK``; anything else uses Gloo.
    Calling it again returns the group already joined.
    """
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)  # before init so NCCL binds the right GPU
    if not dist.is_initialized():
        if backend == "nccl" and not dist.is_nccl_available():
            raise RuntimeError("WORLD_SIZE > 1 on CUDA needs NCCL, which this torch build lacks")
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, backend=backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def local_rows(global_batch: int, rank: int, world_size: int) -> torch.Tensor:
    """Positions in the global batch held by ``rank``: ``rank, rank + w, ...`` -> ``(global_batch / w,)`` int64."""
    return torch.arange(rank, global_batch, world_size)


def wrap_ddp(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when running multi-process, else ``model`` itself."""
    if not info.enabled:
        return model
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    # No buffer sync in forward: the models hold no running statistics, and rank-0-only calls (pictures) must
    # not issue a collective. Newer torch names the option forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters:
        return DDP(model, device_ids=ids, forward_sync_buffers=False)
    return DDP(model, device_ids=ids, broadcast_buffers=False)


__all__ = [
    "DistInfo",
    "active",
    "all_gather_objects",
    "barrier",
    "broadcast_object",
    "cleanup",
    "env_world_size",
    "init_distributed",
    "local_rows",
    "wrap_ddp",
]
