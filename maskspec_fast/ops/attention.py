"""Attention: the explicit reference and the backend picked once at model construction.

Backends, best first: ``flash_attn`` (the flash-attn package; CUDA, fp16/bf16), ``sdpa`` (PyTorch's
``scaled_dot_product_attention``, which itself picks flash / cuDNN / memory-efficient kernels), ``reference``
(explicit softmax(QK^T / sqrt(d)) V, the truth every backend is tested against).
"""
from __future__ import annotations

import functools
import importlib.util
import math
from typing import Callable

import torch
import torch.nn.functional as F


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V, computed in fp32 (also under autocast).

    q, k, v: ``(B, H, N, d)``. key_padding_mask: ``(B, N)`` bool, True = padded key (never attended to).
    Returns ``(B, H, N, d)`` in q's dtype.

    Autocast is switched off inside: ``matmul`` is on autocast's low-precision list, so under bf16 autocast the
    ``.float()`` upcasts alone would be undone and the scores computed in bf16, a weaker oracle for the bf16
    parity tests that compare fast paths against this one.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * scale  # (B, H, N, N)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        attn = scores.softmax(dim=-1)
        return torch.matmul(attn, v.float()).to(q.dtype)  # (B, H, N, d)


def _sdpa(q, k, v, key_padding_mask=None):
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # True = may attend
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash_module():
    """The flash-attn package (imported on first use; tests substitute a stand-in)."""
    import flash_attn

    return flash_attn


def _flash_eligible(t: torch.Tensor) -> bool:
    """flash-attn runs fp16/bf16 CUDA tensors; everything else takes SDPA."""
    return t.is_cuda and t.dtype in (torch.float16, torch.bfloat16)


def flash_attention_packed(qkv: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention straight from the fused QKV projection: qkv ``(B, N, 3, H, d)`` -> ``(B, N, H, d)``.

    No padding: ``flash_attn_qkvpacked_func``. With ``key_padding_mask`` ``(B, N)`` (True = padded) the valid tokens
    are packed into one ``(total, 3, H, d)`` sequence batch with ``cu_seqlens`` and run through
    ``flash_attn_varlen_qkvpacked_func``, so padded tokens neither attend nor are attended to and cost nothing;
    their output rows are zeros. Ineligible inputs (CPU, fp32) take SDPA with the same semantics.
    """
    if not _flash_eligible(qkv):
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        return _sdpa(q, k, v, key_padding_mask).transpose(1, 2)  # (B, N, H, d)
    fa = _flash_module()
    if key_padding_mask is None:
        return fa.flash_attn_qkvpacked_func(qkv)
    b, n = key_padding_mask.shape
    valid = ~key_padding_mask  # (B, N)
    lens = valid.sum(dim=1, dtype=torch.int32)  # (B,)
    cu_seqlens = F.pad(torch.cumsum(lens, 0, dtype=torch.int32), (1, 0))  # (B+1,) offsets into the packed batch
    packed = qkv[valid]  # (total, 3, H, d), sample-major as cu_seqlens expects
    out_packed = fa.flash_attn_varlen_qkvpacked_func(packed, cu_seqlens, int(lens.max().item()))  # (total, H, d)
    out = qkv.new_zeros(b, n, *qkv.shape[-2:])
    out[valid] = out_packed
    return out


def _flash(q, k, v, key_padding_mask=None):
    """Backend entry with separate (B, H, N, d) tensors (the model's blocks call flash_attention_packed)."""
    qkv = torch.stack([q, k, v], dim=2).transpose(1, 3)  # (B, H, 3, N, d) -> (B, N, 3, H, d)
    return flash_attention_packed(qkv, key_padding_mask).transpose(1, 2)


_BACKENDS = {"reference": attention_ref, "sdpa": _sdpa, "flash_attn": _flash}


def _packed(qkv: torch.Tensor, key_padding_mask: torch.Tensor | None = None, *, fn=attention_ref) -> torch.Tensor:
    """``fn`` on a packed ``qkv`` ``(B, N, 3, H, d)``: split into (B, H, N, d) tensors, back to ``(B, N, H, d)``."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
    return fn(q, k, v, key_padding_mask).transpose(1, 2)


def packed_attention(backend: str) -> Callable[..., torch.Tensor]:
    """The op-table callable of ``backend``: ``(qkv (B, N, 3, H, d), key_padding_mask (B, N) | None) -> (B, N, H, d)``,
    the layout the blocks' fused QKV projection produces (flash-attn reads it as is: no permute, no copy)."""
    if backend == "flash_attn":
        return flash_attention_packed
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {sorted(_BACKENDS)}")
    return functools.partial(_packed, fn=_BACKENDS[backend])


def choose_attention_backend(fused: bool) -> tuple[str, str]:
    """Return ``(name, reason)``: the reference for the plain path, the best available kernel for the fused path."""
    if not fused:
        return "reference", "plain path: explicit softmax(QK^T/sqrt(d))V"
    if flash_attn_available() and torch.cuda.is_available():
        return "flash_attn", "flash-attn found, CUDA present: qkv-packed kernel, varlen for padded batches (fp16/bf16; others SDPA)"
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
