"""Reference masked MSE with MAE's per-patch target normalization (norm_pix_loss)."""
from __future__ import annotations

import torch

NORM_PIX_EPS = 1e-6


def normalize_patches(target: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """``t = (p - mean(p)) / sqrt(var(p) + eps)`` over the last axis, with the UNBIASED variance (MAE)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse_ref(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """MAE's reconstruction loss.

    pred, target: ``(B, L, P)`` (target = raw patches); mask: ``(B, L)``, 1 = removed (scored), 0 = kept.
    loss = sum_{b,l} mask[b,l] * mean_k (pred - t)^2 / sum_{b,l} mask[b,l], with t the normalized target when
    ``norm_pix``. Computed in fp32 whatever the input dtype; returns a 0-dim fp32 tensor (0 when nothing is masked).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, L) = {tuple(pred.shape[:-1])}")
    t = target.float()
    if norm_pix:
        t = normalize_patches(t)
    per_patch = (pred.float() - t).pow(2).mean(dim=-1)  # (B, L)
    m = mask.float()
    return (per_patch * m).sum() / m.sum().clamp_min(1.0)


def masked_mse_on_masked_ref(
    pred_masked: torch.Tensor, target: torch.Tensor, ids_masked: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """The same loss when the decoder predicted only the masked patches.

    pred_masked ``(B, M, P)`` for patches ``ids_masked (B, M)`` of target ``(B, L, P)`` (raw patches):
    ``loss = mean over the B*M rows of mean_k (pred - t)^2`` = :func:`masked_mse_ref` of the full prediction with
    those rows masked. Gathers the target rows, then scores every row.
    """
    p = target.shape[-1]
    t = torch.gather(target, 1, ids_masked.unsqueeze(-1).expand(-1, -1, p))  # (B, M, P)
    ones = torch.ones(pred_masked.shape[:2], device=pred_masked.device, dtype=torch.float32)
    return masked_mse_ref(pred_masked, t, ones, norm_pix)


