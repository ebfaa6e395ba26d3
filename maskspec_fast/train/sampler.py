"""A resumable, shardable sampler: a seeded permutation per epoch, split across ranks, that can start mid-epoch."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Indices of epoch ``e`` = permutation(seed + e) (or ``range`` without shuffle), rank ``r`` of ``w`` taking
    every w-th index from position r. The permutation is padded by wrapping so that every rank gets the same
    count (DDP needs equal step counts); ``padding`` says how many indices repeat. ``skip`` drops the first
    ``skip`` indices of this rank's list (resume mid-epoch)."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise ValueError("the dataset is empty")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        self.per_rank = -(-size // world_size)  # ceil
        self.padding = self.per_rank * world_size - size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        order += order[: self.padding]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip
