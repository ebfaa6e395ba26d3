"""Choose, once, which implementation each model op uses, and say why.

The plain path uses the references in :mod:`maskspec_fast.ops`. The fused path takes the fastest available
piece for each op and falls back to the reference (reporting the reason) when a piece is missing:

- ``patch_tokens``: C++ patchify (CPU) / Triton patchify (CUDA) + one Linear, instead of the Conv2d;
- ``gather_visible``, ``unshuffle``: Triton token gathers with the positional add fused (and their backwards);
- ``masked_mse``: Triton masked MSE writing the gradient in the forward pass; ``masked_mse_on_masked`` scores
  predictions made for masked patches only (the decoder head skips visible tokens when ``pred`` is not needed);
- attention: flash-attn, else PyTorch SDPA (see :mod:`maskspec_fast.ops.attention`).

The Triton and C++ ops dispatch per call on the tensor's device (CUDA kernels; CPU interpreter under
``TRITON_INTERPRET=1``; otherwise the reference), so one model object is valid on either device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .ops.attention import choose_attention_backend
from .ops.gather import gather_visible_ref, unshuffle_ref
from .ops.masked_mse import masked_mse
from .ops.patchify import patchify

_OPS = ("patch_tokens", "gather_visible", "unshuffle", "masked_mse", "masked_mse_on_masked")


def patch_tokens_ref(img: torch.Tensor, patch_embed: nn.Module) -> torch.Tensor:
    """img ``(B, 1, F, T)`` -> tokens ``(B, L, D)`` through the patch-embedding convolution."""
    return patch_embed(img)


def masked_mse_on_masked_ref(
    pred_masked: torch.Tensor, target: torch.Tensor, ids_masked: torch.Tensor, norm_pix: bool = True
) -> torch.Tensor:
    """Loss of predictions for the masked patches only: pred_masked ``(B, M, P)``, target ``(B, L, P)`` raw
    patches, ids_masked ``(B, M)`` -> mean over the B*M patches of mean_k (pred - t)^2 (= masked_mse)."""
    p = target.shape[-1]
    tgt = torch.gather(target, 1, ids_masked.unsqueeze(-1).expand(-1, -1, p))  # (B, M, P)
    ones = torch.ones(tgt.shape[:2], device=tgt.device)
    return masked_mse(pred_masked, tgt, ones, norm_pix)


@dataclass
class OpSet:
    """The callables a model uses, plus ``report``: op name -> "implementation (reason)"."""

    attention_backend: str
    patch_tokens: Callable[..., torch.Tensor] = patch_tokens_ref
    gather_visible: Callable[..., torch.Tensor] = gather_visible_ref
    unshuffle: Callable[..., torch.Tensor] = unshuffle_ref
    masked_mse: Callable[..., torch.Tensor] = masked_mse
    masked_mse_on_masked: Callable[..., torch.Tensor] = masked_mse_on_masked_ref
    patchify: Callable[..., torch.Tensor] = patchify
    report: dict[str, str] = field(default_factory=dict)


def resolve(fused: bool) -> OpSet:
    """Pick implementations for the plain (``fused=False``) or fused path."""
    attn, why = choose_attention_backend(fused)
    ops = OpSet(attention_backend=attn)
    ops.report["attention"] = f"{attn} ({why})"
    if not fused:
        for name in _OPS:
            ops.report[name] = "reference (plain path)"
        return ops
    _use_triton(ops)
    _use_patchify_ext(ops)
    return ops


def _use_triton(ops: OpSet) -> None:
    try:
        from .ops import triton_gather, triton_masked_mse
        from .ops._triton_utils import HAS_TRITON, triton_status
    except ImportError as e:  # a broken optional install must not break the model
        for name in ("gather_visible", "unshuffle", "masked_mse", "masked_mse_on_masked"):
            ops.report[name] = f"reference (Triton ops unavailable: {e})"
        return
    ops.gather_visible = triton_gather.gather_visible
    ops.unshuffle = triton_gather.unshuffle
    ops.masked_mse = triton_masked_mse.masked_mse_fused
    ops.masked_mse_on_masked = triton_masked_mse.masked_mse_on_masked
    status = triton_status() if HAS_TRITON else "triton not installed: reference everywhere"
    for name in ("gather_visible", "unshuffle", "masked_mse", "masked_mse_on_masked"):
        ops.report[name] = f"triton custom op ({status})"


def _use_patchify_ext(ops: OpSet) -> None:
    try:
        from .ops import patchify_fused
    except ImportError as e:
        ops.report["patch_tokens"] = f"reference Conv2d (fused patchify unavailable: {e})"
        return
    ops.patch_tokens = patchify_fused.patch_tokens_fused
    ops.patchify = patchify_fused.patchify_fused
    ops.report["patch_tokens"] = f"fused patchify + Linear ({patchify_fused.status()})"
