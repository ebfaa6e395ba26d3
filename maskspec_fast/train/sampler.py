"""A resumable, shardable sampler: a seeded order per epoch, split across ranks, that can start mid-epoch."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ..data.order import epoch_order, per_rank, rank_share


class ResumableSampler(Sampler[int]):
    """Indices of epoch ``e``: a function of ``(seed, e)`` only, so a resumed run draws exactly what an
    uninterrupted one would.

    * ``shuffle``: ``permutation(seed + e)`` (else ``range(size)``).
    * ``weights`` ``(size,)`` (class-balanced sampling, e.g. ``dataset.sample_weights()``): ``size`` indices drawn
      with replacement with probability ``weights[i] / sum(weights)`` from a generator seeded by ``seed + e``.

    Rank ``r`` of ``w`` takes every w-th index from position r, so the global batch s (positions
    ``[sB, (s+1)B)``) is the union of the ranks' local batches s, whatever w is. The order is padded by wrapping
    so that every rank gets the same count (DDP needs equal step counts); ``padding`` says how many indices
    repeat. ``skip`` drops the first ``skip`` indices of this rank's list (resume mid-epoch).
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        weights: torch.Tensor | None = None,
    ):
        if size <= 0:
            raise ValueError("the dataset is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (size,) or not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"weights must be ({size},), finite, non-negative and not all zero")
        self.size, self.seed, self.shuffle, self.weights = size, seed, shuffle, weights
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        self.per_rank = per_rank(size, world_size)
        self.padding = self.per_rank * world_size - size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def global_order(self) -> list[int]:
        """This epoch's order over all ranks (before padding)."""
        return epoch_order(self.size, self.seed, self.epoch, self.shuffle, self.weights)

    def indices(self) -> list[int]:
        return rank_share(self.global_order(), self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip
