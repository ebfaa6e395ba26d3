"""The op table: which implementation each model op runs, chosen once when a model is built, and why.

A model's forward calls ``self.ops.<op>`` for every op below and never asks which path it is on; the plain path
gets the references of :mod:`maskspec_fast.ops` (``<op>_ref``), the fused path the fast version of each op
(``<op>`` in its fast module) where that can run, else the reference with the reason in the report.

| op | plain (reference) | fused |
| --- | --- | --- |
| ``patchify`` img -> (B, L, p*p) | ``ops.patchify.patchify_ref`` | C++ / Triton ``ops.patchify_fused.patchify`` |
| ``patch_tokens`` -> (B, L, D) | Conv2d (``patch_tokens_ref``) | Linear on the patches (``patchify_fused.patch_tokens``) |
| ``masking`` noise -> ids | ``ops.masking.masking_ids`` | the same (index bookkeeping, no fast version) |
| ``gather_visible`` (+pos) | ``ops.gather.gather_visible_ref`` | Triton ``ops.triton_gather.gather_visible`` |
| ``unshuffle`` (+pos) | ``ops.gather.unshuffle_ref`` | Triton ``ops.triton_gather.unshuffle`` |
| ``masked_mse`` | ``ops.masked_mse.masked_mse_ref`` | Triton ``ops.triton_masked_mse.masked_mse`` |
| ``masked_mse_on_masked`` | ``ops.masked_mse.masked_mse_on_masked_ref`` | Triton ``triton_masked_mse.masked_mse_on_masked`` |
| attention | ``ops.attention.attention_ref`` (explicit softmax) | flash-attn, else PyTorch SDPA |

The Triton and C++ ops dispatch per call on the tensor's device (CUDA kernels; CPU interpreter under
``TRITON_INTERPRET=1``; C++ on CPU for patchify; otherwise the reference), so one model object is valid on either
device; the report says what each op runs where.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .ops.attention import choose_attention_backend, packed_attention
from .ops.gather import gather_visible_ref, unshuffle_ref
from .ops.masked_mse import masked_mse_on_masked_ref, masked_mse_ref
from .ops.masking import masking_ids
from .ops.patchify import patch_tokens_ref, patchify_ref

OPS = ("patchify", "patch_tokens", "masking", "gather_visible", "unshuffle", "masked_mse", "masked_mse_on_masked",
       "attention")
PRETRAIN_OPS = OPS  # Model runs every op
CLASSIFIER_OPS = ("patch_tokens", "masking", "gather_visible", "attention")  # tokens, patchout, attention

_TRITON_OPS = ("gather_visible", "unshuffle", "masked_mse", "masked_mse_on_masked")


@dataclass
class OpTable:
    """The callables a model runs, plus ``report``: op name -> "implementation (reason)" for the ops it uses."""

    attention: Callable[..., torch.Tensor]
    patchify: Callable[..., torch.Tensor] = patchify_ref
    patch_tokens: Callable[..., torch.Tensor] = patch_tokens_ref
    masking: Callable[..., tuple[torch.Tensor, ...]] = masking_ids
    gather_visible: Callable[..., torch.Tensor] = gather_visible_ref
    unshuffle: Callable[..., torch.Tensor] = unshuffle_ref
    masked_mse: Callable[..., torch.Tensor] = masked_mse_ref
    masked_mse_on_masked: Callable[..., torch.Tensor] = masked_mse_on_masked_ref
    report: dict[str, str] = field(default_factory=dict)




def resolve(fused: bool, used: Sequence[str] = OPS) -> OpTable:
    """The op table for the plain (``fused=False``) or fused path; ``report`` covers the ``used`` ops only."""
    attn, why = choose_attention_backend(fused)
    table = OpTable(attention=packed_attention(attn))
    report = {name: "reference (plain path)" for name in OPS}
    report["attention"] = f"{attn} ({why})"
    report["masking"] = "reference (index bookkeeping; the same on both paths)"
    if fused:
        report.update(_use_triton(table))
        report.update(_use_patchify_ext(table))
    table.report = {name: report[name] for name in OPS if name in used}
    return table


def _use_triton(table: OpTable) -> dict[str, str]:
    try:
        from .ops import triton_gather, triton_masked_mse
        from .ops._triton_utils import HAS_TRITON, triton_status
    except ImportError as e:  # a broken optional install must not break the model
        return {name: f"reference (Triton ops unavailable: {e})" for name in _TRITON_OPS}
    table.gather_visible = triton_gather.gather_visible
    table.unshuffle = triton_gather.unshuffle
    table.masked_mse = triton_masked_mse.masked_mse
    table.masked_mse_on_masked = triton_masked_mse.masked_mse_on_masked
    status = triton_status() if HAS_TRITON else "triton not installed: reference everywhere"
    return {name: f"triton custom op ({status})" for name in _TRITON_OPS}


def _use_patchify_ext(table: OpTable) -> dict[str, str]:
    try:
        from .ops import patchify_fused
    except ImportError as e:
        why = f"fused patchify unavailable: {e}"
        return {"patchify": f"reference ({why})", "patch_tokens": f"reference Conv2d ({why})"}
    table.patchify = patchify_fused.patchify
    table.patch_tokens = patchify_fused.patch_tokens
    status = patchify_fused.status()
    return {"patchify": f"fused patchify ({status})",
            "patch_tokens": f"Linear on the fused patches (one read of the input for tokens and targets; {status})"}


__all__ = ["CLASSIFIER_OPS", "OPS", "PRETRAIN_OPS", "OpTable", "resolve"]
