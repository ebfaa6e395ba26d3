"""Choose, once, which implementation each model op uses, and say why.

The plain path uses the references in :mod:`maskspec_fast.ops`. The fused path takes the fastest available
piece for each op and falls back to the reference (reporting the reason) when a piece is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

from .ops.attention import choose_attention_backend
from .ops.gather import gather_visible_ref, unshuffle_ref
from .ops.masked_mse import masked_mse


def patch_tokens_ref(img: torch.Tensor, patch_embed: nn.Module) -> torch.Tensor:
    """img ``(B, 1, F, T)`` -> tokens ``(B, L, D)`` through the patch-embedding convolution."""
    return patch_embed(img)


@dataclass
class OpSet:
    """The callables a model uses, plus ``report``: op name -> "implementation (reason)"."""

    attention_backend: str
    patch_tokens: Callable[..., torch.Tensor] = patch_tokens_ref
    gather_visible: Callable[..., torch.Tensor] = gather_visible_ref
    unshuffle: Callable[..., torch.Tensor] = unshuffle_ref
    masked_mse: Callable[..., torch.Tensor] = masked_mse
    report: dict[str, str] = field(default_factory=dict)


def resolve(fused: bool) -> OpSet:
    """Pick implementations for the plain (``fused=False``) or fused path."""
    attn, why = choose_attention_backend(fused)
    ops = OpSet(attention_backend=attn)
    ops.report["attention"] = f"{attn} ({why})"
    if not fused:
        for name in ("patch_tokens", "gather_visible", "unshuffle", "masked_mse"):
            ops.report[name] = "reference (plain path)"
        return ops
    for name in ("patch_tokens", "gather_visible", "unshuffle", "masked_mse"):
        ops.report[name] = "reference (no fused kernel wired yet)"
    return ops
