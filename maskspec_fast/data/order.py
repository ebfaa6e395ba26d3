"""Epoch order and rank sharding: the one implementation that every input path uses (the DataLoader sampler,
the DALI loader and the shard readers), so that a seed and an epoch name the same clips everywhere."""
from __future__ import annotations

from collections.abc import Sequence

import torch


def epoch_order(
    size: int, seed: int, epoch: int, shuffle: bool = True, weights: torch.Tensor | None = None
) -> list[int]:
    """Global order of the ``size`` items for ``(seed, epoch)``: a function of those only.

    * ``weights`` ``(size,)``: ``size`` draws with replacement, ``P(i) = w_i / sum(w)`` (class-balanced sampling);
    * else ``shuffle``: ``randperm(size)`` from a generator seeded with ``seed + epoch``; else ``range(size)``.
    """
    g = torch.Generator().manual_seed(seed + epoch)
    if weights is not None:
        return torch.multinomial(weights, size, replacement=True, generator=g).tolist()
    if shuffle:
        return torch.randperm(size, generator=g).tolist()
    return list(range(size))


def per_rank(size: int, world_size: int) -> int:
    """Items each rank gets: ``ceil(size / world_size)`` (the order is padded by wrapping to make it even)."""
    return -(-size // world_size)


def rank_share(order: Sequence[int], rank: int, world_size: int, pad: bool = True) -> list[int]:
    """Rank ``r`` of ``w`` takes positions ``r, r + w, r + 2w, ...`` of the order, padded by wrapping (``pad``:
    every rank gets :func:`per_rank` items, as DDP needs equal step counts; unpadded, the shares partition the
    order exactly and differ in size by at most one).

    Striding (not contiguous blocks) keeps the global batch ``s`` (positions ``[sB, (s+1)B)``) equal to the union
    of the ranks' local batches ``s`` whatever ``w`` is, so a run on 1 or 8 processes sees the same batches.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    n = len(order)
    if n == 0:
        return []
    if not pad:
        return list(order[rank::world_size])
    padded = list(order) + [order[i % n] for i in range(per_rank(n, world_size) * world_size - n)]
    return padded[rank::world_size]


__all__ = ["epoch_order", "per_rank", "rank_share"]
