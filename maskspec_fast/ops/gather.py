"""Reference token gathers around the encoder: visible gather (+pos) and decoder un-shuffle (+pos)."""
from __future__ import annotations

import torch


def gather_visible_ref(x: torch.Tensor, ids_keep: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
    """``out[b, k] = x[b, ids_keep[b, k]] + pos[ids_keep[b, k]]``.

    x: ``(B, L, D)``; ids_keep: ``(B, K)`` int64; pos: ``(L, D)`` or ``(1, L, D)`` or None. Returns ``(B, K, D)``.
    """
    d = x.shape[-1]
    idx = ids_keep.unsqueeze(-1).expand(-1, -1, d)  # (B, K, D)
    if pos is not None:
        x = x + pos.reshape(1, -1, d)
    return torch.gather(x, 1, idx)


def unshuffle_ref(
    x_visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor, pos: torch.Tensor | None = None
) -> torch.Tensor:
    """Put visible tokens back among mask tokens in patch order (MAE's decoder input).

    x_visible: ``(B, K, Dd)``; mask_token: ``(Dd,)`` (or any shape with Dd elements); ids_restore: ``(B, L)``.
    ``out[b, l] = x_visible[b, ids_restore[b, l]] if ids_restore[b, l] < K else mask_token``, plus ``pos[l]``.
    Returns ``(B, L, Dd)``.
    """
    b, k, d = x_visible.shape
    n = ids_restore.shape[1]
    tokens = torch.cat([x_visible, mask_token.reshape(1, 1, d).expand(b, n - k, d)], dim=1)  # (B, L, Dd) shuffled
    out = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))  # (B, L, Dd) patch order
    if pos is not None:
        out = out + pos.reshape(1, n, d)
    return out
