"""Triton masked MSE with MAE's per-patch target normalization, loss and gradient in one pass.

For each patch row r (prediction ``p``, raw target ``x``, both P values) the kernel computes, in fp32::

    mu = mean(x);  c = x - mu;  var = sum(c^2) / (P - 1)   (UNBIASED, as MAE);  y = c / sqrt(var + 1e-6)
    row_mse[r] = mean_k (p - y)^2
    g[r] = 2 w_r (p - y) / P          (w_r = mask weight; d(w_r row_mse[r]) / dp)

and torch finishes ``loss = sum_r w_r row_mse[r] / max(sum_r w_r, 1)`` on the (B*L,) row vector. Like fused
cross-entropy kernels, the gradient is stored during the forward (the backward then only scales it by
``grad_loss / max(sum w, 1)``), so pred and target are read once in total instead of once per pass.
The stored g excludes the ``1 / sum(w)`` factor: ``2 (p - y) / P`` is O(1e-2), safe in fp16, while the full
gradient (~1e-7 at MaskSpec-base sizes) would underflow fp16 before a GradScaler's factor is applied.

Rows with weight 0 (the kept patches, 25 % of rows) are not read at all unless the mask itself needs a gradient;
their gradient rows are written as zeros.

Entry points (references: :func:`maskspec_fast.ops.masked_mse.masked_mse_ref`, :func:`~.masked_mse.masked_mse_on_masked_ref`):

* :func:`masked_mse` ``(pred (B, L, P), target (B, L, P), mask (B, L))`` - same value as the reference;
* :func:`masked_mse_on_masked` ``(pred_masked (B, M, P), target (B, L, P), ids_masked (B, M))`` - the decoder
  predicted only the M masked patches; target rows are gathered inside the kernel (no (B, M, P) copy).

Both are ``torch.library`` custom ops (``maskspec::masked_mse``, ``maskspec::masked_mse_on_masked``) with fake
implementations and registered autograd (grads for pred, target and - for the fused form - a float mask).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ._triton_utils import HAS_TRITON, check_rows, new_empty, on_device, triton_status, use_triton
from .masked_mse import NORM_PIX_EPS, masked_mse_on_masked_ref, masked_mse_ref

if HAS_TRITON:  # the guard is _triton_utils'; these names are None without triton
    from ._triton_utils import tl, triton

__all__ = [
    "MaskedMSELoss",
    "masked_mse",
    "masked_mse_forward",
    "masked_mse_on_masked",
    "masked_mse_on_masked_ref",
    "triton_status",
]


# ------------------------------------------------------------------------------------------------------------
# kernel
# ------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _masked_mse_fwd_kernel(
        pred_ptr, target_ptr, mask_ptr, ids_ptr, row_mse_ptr, gpred_ptr, gtarget_ptr,
        R, M, P, eps,
        stride_pb, stride_pm, stride_tb, stride_tl, stride_wb, stride_ib,
        HAS_MASK: tl.constexpr, HAS_IDS: tl.constexpr, NORM_PIX: tl.constexpr, SKIP_ZERO: tl.constexpr,
        PRED_GRAD: tl.constexpr, TARGET_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    ):
        """A program takes a (BLOCK_R, BLOCK_P) tile: BLOCK_R whole patch rows, grid ``(cdiv(B*M, BLOCK_R),)``.

        ``BLOCK_P = next_power_of_2(P)`` so a row sits in registers for the two-pass mean/variance (tail lanes
        masked: any P works); BLOCK_R packs several short rows per program (16 rows of P = 256) so a program
        moves a few KB and the launch is not dominated by tiny programs.

        Row r = b*M + i reads ``pred[b, i]`` and ``target[b, ids[b, i]]`` (HAS_IDS) or ``target[b, i]``, weight
        ``mask[b, i]`` (HAS_MASK) or 1. Writes ``row_mse[r]`` (fp32) and, when asked, the rows ``gpred[r]`` =
        d(w row_mse)/dpred and ``gtarget[r]`` = d(w row_mse)/dtarget (through the normalization), both
        contiguous (B*M, P).
        """
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # int64: B*L*P can pass 2**31
        rmask = rows < R
        b = rows // M
        i = rows % M
        cols = tl.arange(0, BLOCK_P)
        cmask = cols < P
        tile_mask = rmask[:, None] & cmask[None, :]
        if HAS_IDS:
            trow = tl.load(ids_ptr + b * stride_ib + i, mask=rmask, other=0)
        else:
            trow = i
        if HAS_MASK:
            w = tl.load(mask_ptr + b * stride_wb + i, mask=rmask, other=0.0).to(tl.float32)
        else:
            w = tl.full((BLOCK_R,), 1.0, dtype=tl.float32)
        load_mask = tile_mask
        if SKIP_ZERO:
            load_mask = tile_mask & (w != 0.0)[:, None]  # weight-0 rows: no memory traffic, zeros come out
        p = tl.load(pred_ptr + (b * stride_pb + i * stride_pm)[:, None] + cols[None, :], mask=load_mask, other=0.0)
        p = p.to(tl.float32)
        x = tl.load(target_ptr + (b * stride_tb + trow * stride_tl)[:, None] + cols[None, :], mask=load_mask,
                    other=0.0)
        x = x.to(tl.float32)
        if NORM_PIX:
            mean = tl.sum(x, axis=1) / P
            c = tl.where(tile_mask, x - mean[:, None], 0.0)
            var = tl.sum(c * c, axis=1) / (P - 1)  # unbiased, as torch.var / MAE
            rstd = 1.0 / tl.sqrt(var + eps)
            y = c * rstd[:, None]
        else:
            y = x
        diff = tl.where(tile_mask, p - y, 0.0)
        tl.store(row_mse_ptr + rows, tl.sum(diff * diff, axis=1) / P, mask=rmask)
        g = diff * (2.0 * w / P)[:, None]
        out_offs = rows[:, None] * P + cols[None, :]
        if PRED_GRAD:
            tl.store(gpred_ptr + out_offs, g.to(gpred_ptr.dtype.element_ty), mask=tile_mask)
        if TARGET_GRAD:
            gy = -g  # dL/dy
            if NORM_PIX:
                # y = c * rstd with var unbiased: dL/dx = rstd * (gy - mean(gy) - y * sum(gy * y) / (P - 1))
                gsum = tl.sum(gy, axis=1)
                gydot = tl.sum(gy * y, axis=1)
                gx = rstd[:, None] * (gy - (gsum / P)[:, None] - y * (gydot / (P - 1))[:, None])
            else:
                gx = gy
            tl.store(gtarget_ptr + out_offs, gx.to(gtarget_ptr.dtype.element_ty), mask=tile_mask)


# ------------------------------------------------------------------------------------------------------------
# launcher
# ------------------------------------------------------------------------------------------------------------
def masked_mse_forward(
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None,
    ids: Tensor | None,
    norm_pix: bool,
    pred_grad: bool,
    target_grad: bool,
    skip_zero: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch :func:`_masked_mse_fwd_kernel` over the B*M rows of pred ``(B, M, P)``.

    target: ``(B, L, P)`` raw patches (L = M without ids); mask: ``(B, M)`` weights or None (all 1); ids:
    ``(B, M)`` target row per pred row, or None. Returns ``row_mse (B, M)`` fp32, ``g_pred (B, M, P)`` in
    pred's dtype (``2 w (p - y) / P``) and ``g_target (B, M, P)`` in target's dtype (its counterpart through the
    normalization), each gradient an empty tensor when not asked for.
    """
    check_rows(pred, "pred", 3)
    check_rows(target, "target", 3)
    b, m, p = pred.shape
    dev = pred.device
    row_mse = new_empty((b, m), torch.float32, dev)
    g_pred = new_empty((b, m, p), pred.dtype, dev) if pred_grad else pred.new_empty(0)
    g_target = new_empty((b, m, p), target.dtype, dev) if target_grad else target.new_empty(0)
    if b * m == 0:
        return row_mse, g_pred, g_target
    if mask is not None:
        check_rows(mask, "mask", 2)
        if mask.dtype == torch.bool:
            mask = mask.to(torch.float32)  # B*L values; keeps the kernel's weight load a plain float load
    if ids is not None:
        check_rows(ids, "ids_masked", 2)
    block_p = triton.next_power_of_2(p)
    block_r = max(1, min(16, 4096 // block_p))  # ~4K elements per program
    warps = max(1, min(8, block_r * block_p // 512))
    rows = b * m
    with on_device(pred):  # Triton launches on the current device
        _masked_mse_fwd_kernel[(triton.cdiv(rows, block_r),)](
            pred, target, mask if mask is not None else row_mse, ids if ids is not None else row_mse,
            row_mse, g_pred if pred_grad else row_mse, g_target if target_grad else row_mse,
            rows, m, p, NORM_PIX_EPS,
            pred.stride(0), pred.stride(1), target.stride(0), target.stride(1),
            mask.stride(0) if mask is not None else 0, ids.stride(0) if ids is not None else 0,
            HAS_MASK=mask is not None, HAS_IDS=ids is not None, NORM_PIX=norm_pix,
            SKIP_ZERO=skip_zero and mask is not None, PRED_GRAD=pred_grad, TARGET_GRAD=target_grad,
            BLOCK_R=block_r, BLOCK_P=block_p, num_warps=warps,
        )
    return row_mse, g_pred, g_target


def _scale(g: Tensor, s: Tensor) -> Tensor:
    """``g * s`` with the product formed in fp32 (s is a 0-dim fp32 tensor that may be tiny, e.g. 1/sum(mask)
    times a GradScaler factor; rounding it to fp16 first would lose it)."""
    if g.dtype == torch.float32:
        return g * s
    return (g.float() * s).to(g.dtype)


# ------------------------------------------------------------------------------------------------------------
# custom ops
# ------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("maskspec::masked_mse", mutates_args=())
def _masked_mse_op(
    pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool, pred_grad: bool, target_grad: bool,
    skip_zero: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    row_mse, g_pred, g_target = masked_mse_forward(pred, target, mask, None, norm_pix, pred_grad, target_grad,
                                                   skip_zero)
    w = mask.float()
    loss = (row_mse * w).sum() / w.sum().clamp_min(1.0)
    return loss, row_mse, g_pred, g_target


@_masked_mse_op.register_fake
def _(pred, target, mask, norm_pix, pred_grad, target_grad, skip_zero):
    b, n, _ = pred.shape
    return (
        pred.new_empty((), dtype=torch.float32),
        pred.new_empty((b, n), dtype=torch.float32),
        pred.new_empty(pred.shape if pred_grad else (0,)),
        target.new_empty(target.shape if target_grad else (0,)),
    )


def _masked_mse_setup(ctx, inputs, output):
    pred, target, mask, *_ = inputs
    loss, row_mse, g_pred, g_target = output
    ctx.mark_non_differentiable(row_mse, g_pred, g_target)
    ctx.save_for_backward(mask, loss, row_mse, g_pred, g_target)


def _masked_mse_grad(ctx, grad_loss, *_unused):
    mask, loss, row_mse, g_pred, g_target = ctx.saved_tensors
    w = mask.float()
    wsum = w.sum()
    s = grad_loss.float() / wsum.clamp_min(1.0)
    grad_pred = _scale(g_pred, s) if ctx.needs_input_grad[0] else None
    grad_target = _scale(g_target, s) if ctx.needs_input_grad[1] else None
    grad_mask = None
    if ctx.needs_input_grad[2]:
        # loss = N / max(S, 1): dL/dw = (row_mse - loss * [S >= 1]) / max(S, 1)
        grad_mask = ((row_mse - torch.where(wsum >= 1.0, loss, 0.0)) * s).to(mask.dtype)
    return grad_pred, grad_target, grad_mask, None, None, None, None


torch.library.register_autograd("maskspec::masked_mse", _masked_mse_grad, setup_context=_masked_mse_setup)


@torch.library.custom_op("maskspec::masked_mse_on_masked", mutates_args=())
def _masked_mse_on_masked_op(
    pred_masked: Tensor, target: Tensor, ids_masked: Tensor, norm_pix: bool, pred_grad: bool, target_grad: bool
) -> tuple[Tensor, Tensor, Tensor]:
    row_mse, g_pred, g_rows = masked_mse_forward(pred_masked, target, None, ids_masked, norm_pix, pred_grad,
                                                 target_grad, False)
    loss = row_mse.sum() / max(row_mse.numel(), 1)
    if target_grad:  # kernel rows are in pred order: place them at their patch ids (distinct per sample)
        g_target = torch.zeros_like(target, memory_format=torch.contiguous_format)
        g_target.scatter_(1, ids_masked.unsqueeze(-1).expand(-1, -1, target.shape[-1]), g_rows)
    else:
        g_target = g_rows
    return loss, g_pred, g_target


@_masked_mse_on_masked_op.register_fake
def _(pred_masked, target, ids_masked, norm_pix, pred_grad, target_grad):
    return (
        pred_masked.new_empty((), dtype=torch.float32),
        pred_masked.new_empty(pred_masked.shape if pred_grad else (0,)),
        target.new_empty(target.shape if target_grad else (0,)),
    )


def _on_masked_setup(ctx, inputs, output):
    pred_masked = inputs[0]
    loss, g_pred, g_target = output
    ctx.mark_non_differentiable(g_pred, g_target)
    ctx.save_for_backward(g_pred, g_target)
    ctx.rows = pred_masked.shape[0] * pred_masked.shape[1]


def _on_masked_grad(ctx, grad_loss, *_unused):
    g_pred, g_target = ctx.saved_tensors
    s = grad_loss.float() / max(ctx.rows, 1)
    grad_pred = _scale(g_pred, s) if ctx.needs_input_grad[0] else None
    grad_target = _scale(g_target, s) if ctx.needs_input_grad[1] else None
    return grad_pred, grad_target, None, None, None, None


torch.library.register_autograd(
    "maskspec::masked_mse_on_masked", _on_masked_grad, setup_context=_on_masked_setup
)


# ------------------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------------------
def _needs_grad(t: Tensor) -> bool:
    return torch.is_grad_enabled() and t.requires_grad


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE's reconstruction loss, same value as :func:`maskspec_fast.ops.masked_mse.masked_mse_ref`.

    pred, target: ``(B, L, P)`` (target = raw patches); mask: ``(B, L)``, 1 = removed (scored), 0 = kept.
    ``loss = sum_{b,l} mask[b,l] * mean_k (pred - t)^2 / max(sum mask, 1)``, t the per-patch normalized target
    when ``norm_pix`` (unbiased variance, eps 1e-6). fp32 math; returns a 0-dim fp32 tensor.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.dim() != 3 or mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} must be (B, L) = {tuple(pred.shape[:-1])}")
    if not use_triton(pred):
        return masked_mse_ref(pred, target, mask, norm_pix)
    need_mask = _needs_grad(mask) and mask.is_floating_point()
    loss, *_ = torch.ops.maskspec.masked_mse(
        pred, target, mask, norm_pix, _needs_grad(pred), _needs_grad(target), not need_mask
    )
    return loss


def masked_mse_on_masked(
    pred_masked: Tensor, target: Tensor, ids_masked: Tensor, norm_pix: bool = True
) -> Tensor:
    """Masked MSE when the decoder predicted only the masked patches.

    pred_masked: ``(B, M, P)`` predictions for patches ``ids_masked (B, M)`` (int64, distinct per sample) of
    target ``(B, L, P)`` (raw patches). ``loss = mean over the B*M rows of mean_k (pred - t)^2``, equal to
    ``masked_mse(full_pred, target, mask)`` with full_pred holding pred_masked at ids_masked and mask marking
    them. Returns a 0-dim fp32 tensor.
    """
    if pred_masked.dim() != 3 or target.dim() != 3 or pred_masked.shape[0] != target.shape[0]:
        raise ValueError(f"pred_masked (B, M, P) {tuple(pred_masked.shape)} vs target (B, L, P) {tuple(target.shape)}")
    if pred_masked.shape[-1] != target.shape[-1]:
        raise ValueError(f"pred_masked P = {pred_masked.shape[-1]} but target P = {target.shape[-1]}")
    if ids_masked.shape != pred_masked.shape[:2] or ids_masked.dtype != torch.int64:
        raise ValueError(f"ids_masked must be int64 (B, M) = {tuple(pred_masked.shape[:2])}, got "
                         f"{ids_masked.dtype} {tuple(ids_masked.shape)}")
    if not use_triton(pred_masked):
        return masked_mse_on_masked_ref(pred_masked, target, ids_masked, norm_pix)
    loss, *_ = torch.ops.maskspec.masked_mse_on_masked(
        pred_masked, target, ids_masked, norm_pix, _needs_grad(pred_masked), _needs_grad(target)
    )
    return loss


class MaskedMSELoss(nn.Module):
    """``nn.Module`` form of :func:`masked_mse`: ``loss = MaskedMSELoss()(pred, target, mask)``."""

    def __init__(self, norm_pix: bool = True) -> None:
        super().__init__()
        self.norm_pix = norm_pix

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        return masked_mse(pred, target, mask, self.norm_pix)

    def extra_repr(self) -> str:
        return f"norm_pix={self.norm_pix}"


