"""Reference random masking (MAE's per-sample argsort procedure)."""
from __future__ import annotations

import torch


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """``len_keep = int(L * (1 - r))`` (MAE); 124 of 496 at r = 0.75. At least one token is kept."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_patches * (1 - mask_ratio)))


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a uniformly random subset of tokens per sample.

    x: ``(B, L, D)``; noise: ``(B, L)`` in any range (``U(0, 1)`` when not given).
    ids_shuffle = argsort(noise) (ascending: small noise is kept), ids_restore = argsort(ids_shuffle),
    ids_keep = ids_shuffle[:, :K] with ``K = int(L * (1 - mask_ratio))``.

    Returns ``x_visible (B, K, D)``, ``mask (B, L)`` (1 = removed, 0 = kept, in x's dtype),
    ``ids_restore (B, L)`` and ``ids_keep (B, K)`` (int64).
    """
    if x.dim() != 3:
        raise ValueError(f"random_masking expects x of shape (B, L, D), got {tuple(x.shape)}")
    b, n, d = x.shape
    keep = num_visible(n, mask_ratio)
    if noise is None:
        noise = torch.rand(b, n, device=x.device)
    elif noise.shape != (b, n):
        raise ValueError(f"noise must have shape (B, L) = {(b, n)}, got {tuple(noise.shape)}")
    mask, ids_restore, ids_keep, _ = masking_ids(noise, keep, dtype=x.dtype)
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))  # (B, K, D)
    return x_visible, mask, ids_restore, ids_keep


def masking_ids(
    noise: torch.Tensor, keep: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index bookkeeping of :func:`random_masking` without touching tokens.

    noise: ``(B, L)``. Returns ``mask (B, L)`` (1 = removed), ``ids_restore (B, L)``, ``ids_keep (B, K)`` and
    ``ids_masked (B, L - K)`` (the removed patch ids, in shuffle order).
    """
    b, n = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1)  # (B, L) ascending: first K are kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    mask = torch.ones(b, n, device=noise.device, dtype=dtype)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to patch order
    return mask, ids_restore, ids_shuffle[:, :keep], ids_shuffle[:, keep:]
