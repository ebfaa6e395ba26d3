"""Reference patchify / unpatchify in MAE's patch order (plain PyTorch)."""
from __future__ import annotations

import torch


def as_image(spec: torch.Tensor) -> torch.Tensor:
    """``(B, F, T)`` or ``(B, 1, F, T)`` -> ``(B, 1, F, T)``; anything else is a ``ValueError``."""
    if spec.dim() == 3:
        return spec.unsqueeze(1)
    if spec.dim() == 4 and spec.shape[1] == 1:
        return spec
    raise ValueError(f"expected a spectrogram of shape (B, n_mels, T) or (B, 1, n_mels, T), got {tuple(spec.shape)}")


def patchify_ref(spec: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """Cut a spectrogram into non-overlapping ``patch x patch`` patches.

    spec: ``(B, F, T)`` or ``(B, 1, F, T)``. Frames beyond the last whole patch (``T % patch``) are dropped,
    as a stride-``patch`` convolution does. Returns ``(B, L, patch*patch)`` with ``L = (F//p) * (T//p)``,
    patches row-major over the (freq, time) grid and values row-major over (freq, time) inside a patch:
    ``out[b, i*gt + j, u*p + v] = spec[b, i*p + u, j*p + v]``.
    """
    x = as_image(spec)
    b, _, f, t = x.shape
    gf, gt = f // patch, t // patch
    if gf == 0 or gt == 0:
        raise ValueError(f"spectrogram {f} x {t} is smaller than one {patch} x {patch} patch")
    x = x[:, 0, : gf * patch, : gt * patch]  # (B, gf*p, gt*p)
    x = x.reshape(b, gf, patch, gt, patch)  # (B, gf, p, gt, p)
    x = x.permute(0, 1, 3, 2, 4)  # (B, gf, gt, p, p)
    return x.reshape(b, gf * gt, patch * patch)  # (B, L, p*p)


def unpatchify(
    patches: torch.Tensor, grid: tuple[int, int] | None = None, patch: int = 16, n_mels: int = 128
) -> torch.Tensor:
    """Inverse of :func:`patchify_ref`: ``(B, L, p*p)`` with ``L = gf*gt`` -> ``(B, gf*p, gt*p)``.

    ``grid = (gf, gt)``; when omitted, ``gf = n_mels // patch`` (8 for 128 mel bins) and ``gt = L // gf``.
    """
    b, n, d = patches.shape
    if grid is None:
        gf = n_mels // patch
        if gf == 0 or n % gf:
            raise ValueError(f"{n} patches do not fill {gf} frequency rows; pass grid=(gf, gt)")
        grid = (gf, n // gf)
    gf, gt = grid
    if n != gf * gt or d != patch * patch:
        raise ValueError(f"patches {tuple(patches.shape)} do not match grid {grid} with patch {patch}")
    x = patches.reshape(b, gf, gt, patch, patch)  # (B, gf, gt, p, p)
    x = x.permute(0, 1, 3, 2, 4)  # (B, gf, p, gt, p)
    return x.reshape(b, gf * patch, gt * patch)


def patch_tokens_ref(img: torch.Tensor, patches: torch.Tensor | None, patch_embed: torch.nn.Module) -> torch.Tensor:
    """Token embedding: img ``(B, 1, F, T)`` -> tokens ``(B, L, D)`` through the stride-p convolution
    (``patch_embed``), as MAE computes it; ``patches`` (the same input patchified) is not needed here."""
    return patch_embed(img)


