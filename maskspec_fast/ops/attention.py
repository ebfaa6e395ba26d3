"""Attention: the explicit reference and the backend picked once at model construction.

Backends, best first: ``flash_attn`` (the flash-attn package; CUDA, fp16/bf16), ``sdpa`` (PyTorch's
``scaled_dot_product_attention``, which itself picks flash / cuDNN / memory-efficient kernels), ``reference``
(explicit softmax(QK^T / sqrt(d)) V, the truth every backend is tested against).
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V, computed in fp32.

    q, k, v: ``(B, H, N, d)``. key_padding_mask: ``(B, N)`` bool, True = padded key (never attended to).
    Returns ``(B, H, N, d)`` in q's dtype.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale  # (B, H, N, N)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    attn = scores.softmax(dim=-1)
    return torch.matmul(attn, v.float()).to(q.dtype)


def _sdpa(q, k, v, key_padding_mask=None):
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = may attend
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash(q, k, v, key_padding_mask=None):
    # flash-attn wants (B, N, H, d) fp16/bf16 on CUDA; padded batches fall back to SDPA (masked).
    if key_padding_mask is not None or q.dtype not in (torch.float16, torch.bfloat16) or not q.is_cuda:
        return _sdpa(q, k, v, key_padding_mask)
    from flash_attn import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


_BACKENDS = {"reference": attention_ref, "sdpa": _sdpa, "flash_attn": _flash}


def choose_attention_backend(fused: bool) -> tuple[str, str]:
    """Return ``(name, reason)``: the reference for the plain path, the best available kernel for the fused path."""
    if not fused:
        return "reference", "plain path: explicit softmax(QK^T/sqrt(d))V"
    if flash_attn_available() and torch.cuda.is_available():
        return "flash_attn", "flash-attn package found and CUDA present (fp16/bf16 inputs; others use SDPA)"
    reason = "flash-attn not installed" if not flash_attn_available() else "no CUDA device"
    return "sdpa", f"{reason}; torch scaled_dot_product_attention picks flash/cuDNN/efficient kernels"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    backend: str = "reference",
) -> torch.Tensor:
    """Dispatch to one backend. Shapes as in :func:`attention_ref`."""
    try:
        fn = _BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {sorted(_BACKENDS)}") from None
    return fn(q, k, v, key_padding_mask)
