"""Triton token gathers around the encoder, with their backward passes.

* ``gather_visible(x, ids_keep, pos)``: ``out[b, k] = x[b, ids_keep[b, k]] + pos[ids_keep[b, k]]``, the encoder's
  input (MAE keeps K of L patch tokens). Fusing the pos add into the gather reads x once instead of writing
  ``x + pos`` (B, L, D) and reading it back.
* ``unshuffle(x_visible, mask_token, ids_restore, pos)``: the decoder's input (B, L, Dd) in patch order, visible
  tokens back at their places, the mask token elsewhere, plus ``pos[l]``. Replaces MAE's cat + gather + add (three
  (B, L, Dd) passes) with one.

Both are ``torch.library`` custom ops (``maskspec::gather_visible``, ``maskspec::unshuffle`` and their
``*_backward`` ops) with fake implementations and registered autograd, so ``torch.compile`` keeps them as single
nodes in its graph. The references are :func:`maskspec_fast.ops.gather.gather_visible_ref` and
:func:`maskspec_fast.ops.gather.unshuffle_ref`; on CPU without ``TRITON_INTERPRET=1`` (or without triton) the
public functions call them directly.

Input policy: rows are addressed through their batch/row strides, so views such as ``x[:, 1:]`` or
``ids_shuffle[:, :K]`` need no copy; a tensor whose last axis is not unit-stride is rejected with a ValueError
naming it. Upstream gradients (which autograd may hand over as any view, e.g. an expanded scalar) are copied
explicitly when their last axis is not unit-stride.

Preconditions (as in MAE): the K ids of one sample are distinct and ``ids_restore[b]`` is a permutation of
``0..L-1``. The backward kernels rely on them to write every gradient element exactly once with plain stores.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ._triton_utils import (
    HAS_TRITON,
    check_rows,
    new_empty,
    on_device,
    rows_for_backward,
    triton_status,
    use_triton,
)
from .gather import gather_visible_ref, unshuffle_ref

if HAS_TRITON:  # the guard is _triton_utils'; these names are None without triton
    from ._triton_utils import tl, triton

__all__ = [
    "gather_visible",
    "gather_visible_backward",
    "gather_visible_forward",
    "triton_status",
    "unshuffle",
    "unshuffle_backward",
    "unshuffle_forward",
]

# Batch rows per program in the kernels that also reduce over the batch (grad of pos / mask token): a program
# sums BATCH_CHUNK samples in fp32 registers and writes one partial; torch then sums the ceil(B / BATCH_CHUNK)
# partials. 8 keeps the partials small (B=64 -> 8 per patch) while leaving cdiv(L, BLOCK_L) * D/BLOCK_D * 8
# programs (~1000 at MaskSpec-base sizes), enough to fill a GPU. Deterministic, unlike atomics on a (D,)
# mask-token gradient hit B*(L-K) times.
_MAX_BATCH_CHUNK = 8


def _batch_chunk(batch: int) -> int:
    return min(triton.next_power_of_2(batch), _MAX_BATCH_CHUNK)


def _tile(d: int, elems: int) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_D, num_warps)`` for a (rows, D) tile of about ``elems`` elements.

    ``BLOCK_D = next_power_of_2(D)`` capped at 1024 (masked tail lanes handle any D); short rows are stacked
    (BLOCK_R up to 16) so a program moves a few KB rather than one small row; ~8-16 elements per thread.
    """
    block_d = min(triton.next_power_of_2(max(d, 1)), 1024)
    block_r = max(1, min(16, elems // block_d))
    warps = max(1, min(8, block_r * block_d // 512))
    return block_r, block_d, warps


# ------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _gather_visible_fwd_kernel(
        x_ptr, ids_ptr, pos_ptr, out_ptr,
        R, K, D,
        stride_xb, stride_xl, stride_ib, stride_pl, stride_ob, stride_ok,
        HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """A program writes a (BLOCK_R, BLOCK_D) tile of the output rows r = b*K + k (R = B*K rows): grid
        ``(cdiv(B*K, BLOCK_R), cdiv(D, BLOCK_D))``.

        ``out[b, k] = x[b, ids[b, k]] + pos[ids[b, k]]``; the add is done in fp32 and rounded once, as PyTorch's
        ``x + pos`` in 16-bit types.
        """
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # int64: B*L*D can pass 2**31
        rmask = rows < R
        b = rows // K
        k = rows % K
        cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        tile = rmask[:, None] & (cols < D)[None, :]
        idx = tl.load(ids_ptr + b * stride_ib + k, mask=rmask, other=0)
        v = tl.load(x_ptr + (b * stride_xb + idx * stride_xl)[:, None] + cols[None, :], mask=tile, other=0.0)
        v = v.to(tl.float32)
        if HAS_POS:
            v += tl.load(pos_ptr + (idx * stride_pl)[:, None] + cols[None, :], mask=tile, other=0.0).to(tl.float32)
        tl.store(out_ptr + (b * stride_ob + k * stride_ok)[:, None] + cols[None, :], v.to(out_ptr.dtype.element_ty),
                 mask=tile)

    @triton.jit
    def _gather_visible_bwd_kernel(
        gout_ptr, inv_ptr, gx_ptr, gpos_part_ptr,
        B, L, K, D,
        stride_gb, stride_gk, stride_inb,
        POS_GRAD: tl.constexpr, BATCH_CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Grid ``(cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), cdiv(B, BATCH_CHUNK))``: a program owns BLOCK_L patches,
        one column block and BATCH_CHUNK samples.

        ``grad_x[b, l] = grad_out[b, inv[b, l]]`` if patch l was kept (``inv[b, l] < K``), else 0: every element
        of grad_x is written with a plain store (no zero-fill pass, no atomics). With POS_GRAD the program also
        sums its tile over the chunk into ``gpos_part[chunk, l]`` (fp32); torch sums the chunks.
        """
        patch = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L)
        pmask = patch < L
        cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = (cols < D)[None, :]
        chunk = tl.program_id(2).to(tl.int64)
        acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        for i in range(BATCH_CHUNK):
            b = chunk * BATCH_CHUNK + i
            # (BLOCK_L,) block of b, compared lane by lane: a scalar comparison broadcast onto pmask keeps an
            # int64 payload in the interpreter, which Triton >= 3.9 rejects as a load mask
            rows_ok = pmask & (tl.zeros((BLOCK_L,), dtype=tl.int64) + b < B)
            j = tl.load(inv_ptr + b * stride_inb + patch, mask=rows_ok, other=K)  # K: removed (or no such row)
            kept = j < K
            g = tl.load(gout_ptr + (b * stride_gb + j * stride_gk)[:, None] + cols[None, :],
                        mask=kept[:, None] & cmask, other=0.0)
            g = g.to(tl.float32)
            tl.store(gx_ptr + ((b * L + patch) * D)[:, None] + cols[None, :], g.to(gx_ptr.dtype.element_ty),
                     mask=rows_ok[:, None] & cmask)
            acc += g
        if POS_GRAD:
            tl.store(gpos_part_ptr + ((chunk * L + patch) * D)[:, None] + cols[None, :], acc,
                     mask=pmask[:, None] & cmask)

    @triton.jit
    def _unshuffle_fwd_kernel(
        xv_ptr, tok_ptr, ids_ptr, pos_ptr, out_ptr,
        R, L, K, D,
        stride_xb, stride_xk, stride_ib, stride_pl,
        HAS_POS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """A program writes a (BLOCK_R, BLOCK_D) tile of the output rows r = b*L + l (R = B*L rows): grid
        ``(cdiv(B*L, BLOCK_R), cdiv(D, BLOCK_D))``.

        ``out[b, l] = x_visible[b, j] if j < K else mask_token`` with ``j = ids_restore[b, l]``, plus pos[l]. Only
        the visible rows are read from x_visible (masked-out lanes cost no memory traffic); the mask token is
        loaded once per program and broadcast.
        """
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        b = rows // L
        patch = rows % L
        cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < D
        tile = rmask[:, None] & cmask[None, :]
        j = tl.load(ids_ptr + b * stride_ib + patch, mask=rmask, other=K)
        kept = j < K
        v = tl.load(xv_ptr + (b * stride_xb + j * stride_xk)[:, None] + cols[None, :],
                    mask=kept[:, None] & tile, other=0.0).to(tl.float32)
        t = tl.load(tok_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        v = tl.where(kept[:, None], v, t[None, :])
        if HAS_POS:
            v += tl.load(pos_ptr + (patch * stride_pl)[:, None] + cols[None, :], mask=tile, other=0.0).to(tl.float32)
        tl.store(out_ptr + (rows * D)[:, None] + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=tile)

    @triton.jit
    def _unshuffle_bwd_kernel(
        gout_ptr, ids_ptr, gxv_ptr, gtok_part_ptr, gpos_part_ptr,
        B, L, K, D,
        stride_gb, stride_gl, stride_ib,
        POS_GRAD: tl.constexpr, BATCH_CHUNK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """Grid ``(cdiv(L, BLOCK_L), cdiv(D, BLOCK_D), cdiv(B, BATCH_CHUNK))``: a program owns BLOCK_L patches,
        one column block and BATCH_CHUNK samples, and reads each grad_out row once:

        * kept (``j = ids_restore[b, l] < K``): ``grad_x_visible[b, j] = grad_out[b, l]``, a plain store; since
          ids_restore[b] is a permutation every row j < K of grad_x_visible is written exactly once;
        * removed: the row goes to the mask-token sum, kept in fp32 registers, reduced over the BLOCK_L patches
          and written as the partial ``gtok_part[chunk, l_block]`` (torch sums the partials);
        * POS_GRAD: all rows go to ``gpos_part[chunk, l]``.
        """
        lblock = tl.program_id(0).to(tl.int64)
        patch = lblock * BLOCK_L + tl.arange(0, BLOCK_L)
        pmask = patch < L
        cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = (cols < D)[None, :]
        chunk = tl.program_id(2).to(tl.int64)
        acc_tok = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        acc_pos = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
        for i in range(BATCH_CHUNK):
            b = chunk * BATCH_CHUNK + i
            # (BLOCK_L,) block of b, compared lane by lane: a scalar comparison broadcast onto pmask keeps an
            # int64 payload in the interpreter, which Triton >= 3.9 rejects as a load mask
            rows_ok = pmask & (tl.zeros((BLOCK_L,), dtype=tl.int64) + b < B)
            j = tl.load(ids_ptr + b * stride_ib + patch, mask=rows_ok, other=K)
            kept = j < K
            g = tl.load(gout_ptr + (b * stride_gb + patch * stride_gl)[:, None] + cols[None, :],
                        mask=rows_ok[:, None] & cmask, other=0.0)
            g = g.to(tl.float32)
            tl.store(gxv_ptr + ((b * K + j) * D)[:, None] + cols[None, :], g.to(gxv_ptr.dtype.element_ty),
                     mask=kept[:, None] & cmask)
            acc_tok += tl.where(kept[:, None], 0.0, g)
            acc_pos += g
        n_lblocks = tl.num_programs(0)
        tl.store(gtok_part_ptr + (chunk * n_lblocks + lblock) * D + cols, tl.sum(acc_tok, axis=0),
                 mask=cols < D)
        if POS_GRAD:
            tl.store(gpos_part_ptr + ((chunk * L + patch) * D)[:, None] + cols[None, :], acc_pos,
                     mask=pmask[:, None] & cmask)


# ------------------------------------------------------------------------------------------------------------
# launchers (plain functions on tensors; no autograd)
# ------------------------------------------------------------------------------------------------------------
def _out_dtype(*ts: Tensor | None) -> torch.dtype:
    dt = None
    for t in ts:
        if t is not None:
            dt = t.dtype if dt is None else torch.promote_types(dt, t.dtype)
    assert dt is not None
    return dt


def gather_visible_forward(x: Tensor, ids_keep: Tensor, pos: Tensor | None = None) -> Tensor:
    """Launch :func:`_gather_visible_fwd_kernel`. x ``(B, L, D)``, ids_keep ``(B, K)``, pos ``(L, D)`` or None ->
    ``(B, K, D)`` in the promoted dtype of x and pos."""
    check_rows(x, "x", 3)
    check_rows(ids_keep, "ids_keep", 2)
    b, n, d = x.shape
    k = ids_keep.shape[1]
    if pos is not None:
        check_rows(pos, "pos", 2)
    out = new_empty((b, k, d), _out_dtype(x, pos), x.device)
    if out.numel() == 0:
        return out
    block_r, block_d, warps = _tile(d, 4096)
    grid = (triton.cdiv(b * k, block_r), triton.cdiv(d, block_d))
    with on_device(x):  # Triton launches on the current device
        _gather_visible_fwd_kernel[grid](
            x, ids_keep, pos if pos is not None else x, out,
            b * k, k, d,
            x.stride(0), x.stride(1), ids_keep.stride(0), pos.stride(0) if pos is not None else 0,
            out.stride(0), out.stride(1),
            HAS_POS=pos is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
        )
    return out


def gather_visible_backward(
    grad_out: Tensor, ids_keep: Tensor, num_patches: int, x_dtype: torch.dtype, pos_grad: bool,
    pos_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`gather_visible_forward`: ``grad_x (B, L, D)`` in x_dtype and, when ``pos_grad``,
    ``grad_pos (L, D) = sum_b grad_x[b]`` in pos_dtype (else an empty tensor)."""
    grad_out = rows_for_backward(grad_out)
    b, k, d = grad_out.shape
    n = num_patches
    dev = grad_out.device
    # inverse map: inv[b, l] = k if ids_keep[b, k] == l, else K (removed). B*L int64s, small next to B*L*D.
    inv = torch.full((b, n), k, dtype=torch.int64, device=dev)
    inv.scatter_(1, ids_keep, torch.arange(k, device=dev).expand(b, k))
    grad_x = new_empty((b, n, d), x_dtype, dev)
    if grad_x.numel() == 0:
        return grad_x, grad_out.new_zeros((n, d), dtype=pos_dtype) if pos_grad else grad_out.new_empty(0)
    chunk = _batch_chunk(b) if pos_grad else 1  # no batch reduction needed -> one sample per program
    n_chunks = triton.cdiv(b, chunk)
    part = new_empty((n_chunks, n, d), torch.float32, dev) if pos_grad else grad_x
    block_l, block_d, warps = _tile(d, 2048)
    grid = (triton.cdiv(n, block_l), triton.cdiv(d, block_d), n_chunks)
    with on_device(grad_out):  # Triton launches on the current device
        _gather_visible_bwd_kernel[grid](
            grad_out, inv, grad_x, part,
            b, n, k, d,
            grad_out.stride(0), grad_out.stride(1), inv.stride(0),
            POS_GRAD=pos_grad, BATCH_CHUNK=chunk, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=warps,
        )
    grad_pos = part.sum(0).to(pos_dtype) if pos_grad else grad_out.new_empty(0)
    return grad_x, grad_pos


def unshuffle_forward(
    x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor, pos: Tensor | None = None
) -> Tensor:
    """Launch :func:`_unshuffle_fwd_kernel`. x_visible ``(B, K, Dd)``, mask_token ``(Dd,)``, ids_restore
    ``(B, L)``, pos ``(L, Dd)`` or None -> ``(B, L, Dd)`` in the promoted dtype of the inputs."""
    check_rows(x_visible, "x_visible", 3)
    check_rows(mask_token, "mask_token", 1)
    check_rows(ids_restore, "ids_restore", 2)
    if pos is not None:
        check_rows(pos, "pos", 2)
    b, k, d = x_visible.shape
    n = ids_restore.shape[1]
    out = new_empty((b, n, d), _out_dtype(x_visible, mask_token, pos), x_visible.device)
    if out.numel() == 0:
        return out
    block_r, block_d, warps = _tile(d, 4096)
    grid = (triton.cdiv(b * n, block_r), triton.cdiv(d, block_d))
    with on_device(x_visible):  # Triton launches on the current device
        _unshuffle_fwd_kernel[grid](
            x_visible, mask_token, ids_restore, pos if pos is not None else mask_token, out,
            b * n, n, k, d,
            x_visible.stride(0), x_visible.stride(1), ids_restore.stride(0), pos.stride(0) if pos is not None else 0,
            HAS_POS=pos is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=warps,
        )
    return out


def unshuffle_backward(
    grad_out: Tensor, ids_restore: Tensor, num_visible: int, x_dtype: torch.dtype, token_dtype: torch.dtype,
    pos_grad: bool, pos_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`unshuffle_forward`: ``grad_x_visible (B, K, Dd)``, ``grad_mask_token (Dd,)`` (sum over
    all removed positions) and, when ``pos_grad``, ``grad_pos (L, Dd) = sum_b grad_out[b]`` (else empty)."""
    grad_out = rows_for_backward(grad_out)
    b, n, d = grad_out.shape
    k = num_visible
    dev = grad_out.device
    grad_xv = new_empty((b, k, d), x_dtype, dev)
    if grad_out.numel() == 0:
        gpos = grad_out.new_zeros((n, d), dtype=pos_dtype) if pos_grad else grad_out.new_empty(0)
        return grad_xv.zero_(), grad_out.new_zeros((d,), dtype=token_dtype), gpos
    chunk = _batch_chunk(b)
    n_chunks = triton.cdiv(b, chunk)
    block_l, block_d, warps = _tile(d, 2048)
    n_lblocks = triton.cdiv(n, block_l)
    tok_part = new_empty((n_chunks, n_lblocks, d), torch.float32, dev)
    pos_part = new_empty((n_chunks, n, d), torch.float32, dev) if pos_grad else tok_part
    grid = (n_lblocks, triton.cdiv(d, block_d), n_chunks)
    with on_device(grad_out):  # Triton launches on the current device
        _unshuffle_bwd_kernel[grid](
            grad_out, ids_restore, grad_xv, tok_part, pos_part,
            b, n, k, d,
            grad_out.stride(0), grad_out.stride(1), ids_restore.stride(0),
            POS_GRAD=pos_grad, BATCH_CHUNK=chunk, BLOCK_L=block_l, BLOCK_D=block_d, num_warps=warps,
        )
    grad_tok = tok_part.sum((0, 1)).to(token_dtype)
    grad_pos = pos_part.sum(0).to(pos_dtype) if pos_grad else grad_out.new_empty(0)
    return grad_xv, grad_tok, grad_pos


# ------------------------------------------------------------------------------------------------------------
# custom ops: one graph node each for torch.compile, fake impls for shape propagation, autograd registered
# ------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("maskspec::gather_visible", mutates_args=())
def _gather_visible_op(x: Tensor, ids_keep: Tensor, pos: Optional[Tensor]) -> Tensor:  # noqa: UP045 (custom_op schema inference, torch>=2.4)
    return gather_visible_forward(x, ids_keep, pos)


@_gather_visible_op.register_fake
def _(x: Tensor, ids_keep: Tensor, pos: Tensor | None) -> Tensor:
    return x.new_empty((x.shape[0], ids_keep.shape[1], x.shape[2]), dtype=_out_dtype(x, pos))


@torch.library.custom_op("maskspec::gather_visible_backward", mutates_args=())
def _gather_visible_bwd_op(
    grad_out: Tensor, ids_keep: Tensor, num_patches: int, x_dtype: torch.dtype, pos_grad: bool,
    pos_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    return gather_visible_backward(grad_out, ids_keep, num_patches, x_dtype, pos_grad, pos_dtype)


@_gather_visible_bwd_op.register_fake
def _(grad_out, ids_keep, num_patches, x_dtype, pos_grad, pos_dtype):
    b, _, d = grad_out.shape
    gx = grad_out.new_empty((b, num_patches, d), dtype=x_dtype)
    gp = grad_out.new_empty((num_patches, d) if pos_grad else (0,), dtype=pos_dtype if pos_grad else grad_out.dtype)
    return gx, gp


def _gather_visible_setup(ctx, inputs, output):
    x, ids_keep, pos = inputs
    ctx.save_for_backward(ids_keep)
    ctx.num_patches = x.shape[1]
    ctx.x_dtype = x.dtype
    ctx.pos_dtype = pos.dtype if pos is not None else None


def _gather_visible_grad(ctx, grad_out):
    (ids_keep,) = ctx.saved_tensors
    need_pos = ctx.pos_dtype is not None and ctx.needs_input_grad[2]
    gx, gp = torch.ops.maskspec.gather_visible_backward(
        grad_out, ids_keep, ctx.num_patches, ctx.x_dtype, need_pos, ctx.pos_dtype if need_pos else ctx.x_dtype
    )
    return gx if ctx.needs_input_grad[0] else None, None, gp if need_pos else None


torch.library.register_autograd(
    "maskspec::gather_visible", _gather_visible_grad, setup_context=_gather_visible_setup
)


@torch.library.custom_op("maskspec::unshuffle", mutates_args=())
def _unshuffle_op(x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor, pos: Optional[Tensor]) -> Tensor:  # noqa: UP045 (custom_op schema inference, torch>=2.4)
    return unshuffle_forward(x_visible, mask_token, ids_restore, pos)


@_unshuffle_op.register_fake
def _(x_visible, mask_token, ids_restore, pos):
    b, _, d = x_visible.shape
    return x_visible.new_empty((b, ids_restore.shape[1], d), dtype=_out_dtype(x_visible, mask_token, pos))


@torch.library.custom_op("maskspec::unshuffle_backward", mutates_args=())
def _unshuffle_bwd_op(
    grad_out: Tensor, ids_restore: Tensor, num_visible: int, x_dtype: torch.dtype, token_dtype: torch.dtype,
    pos_grad: bool, pos_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    return unshuffle_backward(grad_out, ids_restore, num_visible, x_dtype, token_dtype, pos_grad, pos_dtype)


@_unshuffle_bwd_op.register_fake
def _(grad_out, ids_restore, num_visible, x_dtype, token_dtype, pos_grad, pos_dtype):
    b, n, d = grad_out.shape
    gx = grad_out.new_empty((b, num_visible, d), dtype=x_dtype)
    gt = grad_out.new_empty((d,), dtype=token_dtype)
    gp = grad_out.new_empty((n, d) if pos_grad else (0,), dtype=pos_dtype if pos_grad else grad_out.dtype)
    return gx, gt, gp


def _unshuffle_setup(ctx, inputs, output):
    x_visible, mask_token, ids_restore, pos = inputs
    ctx.save_for_backward(ids_restore)
    ctx.num_visible = x_visible.shape[1]
    ctx.x_dtype = x_visible.dtype
    ctx.token_dtype = mask_token.dtype
    ctx.pos_dtype = pos.dtype if pos is not None else None


def _unshuffle_grad(ctx, grad_out):
    (ids_restore,) = ctx.saved_tensors
    need_pos = ctx.pos_dtype is not None and ctx.needs_input_grad[3]
    gx, gt, gp = torch.ops.maskspec.unshuffle_backward(
        grad_out, ids_restore, ctx.num_visible, ctx.x_dtype, ctx.token_dtype, need_pos,
        ctx.pos_dtype if need_pos else ctx.x_dtype,
    )
    return (
        gx if ctx.needs_input_grad[0] else None,
        gt if ctx.needs_input_grad[1] else None,
        None,
        gp if need_pos else None,
    )


torch.library.register_autograd("maskspec::unshuffle", _unshuffle_grad, setup_context=_unshuffle_setup)


# ------------------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------------------
def _pos_2d(pos: Tensor | None, n: int, d: int, name: str = "pos") -> Tensor | None:
    if pos is None:
        return None
    if pos.numel() != n * d or pos.shape[-2:] != (n, d):
        raise ValueError(f"{name} must be (L, D) = {(n, d)} or (1, L, D), got {tuple(pos.shape)}")
    return pos.reshape(n, d) if pos.dim() != 2 else pos


def gather_visible(x: Tensor, ids_keep: Tensor, pos: Tensor | None = None) -> Tensor:
    """``out[b, k] = x[b, ids_keep[b, k]] + pos[ids_keep[b, k]]``, differentiable in x and pos.

    x: ``(B, L, D)``; ids_keep: ``(B, K)`` int64, distinct within a sample; pos: ``(L, D)``, ``(1, L, D)`` or
    None. Returns ``(B, K, D)``. Triton on CUDA (or in the interpreter), the reference otherwise.
    """
    if x.dim() != 3 or ids_keep.dim() != 2 or ids_keep.shape[0] != x.shape[0]:
        raise ValueError(f"x must be (B, L, D) and ids_keep (B, K); got {tuple(x.shape)}, {tuple(ids_keep.shape)}")
    if ids_keep.dtype != torch.int64:
        raise ValueError(f"ids_keep must be int64, got {ids_keep.dtype}")
    pos = _pos_2d(pos, x.shape[1], x.shape[2])
    if not use_triton(x):
        return gather_visible_ref(x, ids_keep, pos)
    return torch.ops.maskspec.gather_visible(x, ids_keep, pos)


def unshuffle(
    x_visible: Tensor, mask_token: Tensor, ids_restore: Tensor, pos: Tensor | None = None
) -> Tensor:
    """Decoder input in patch order: ``out[b, l] = x_visible[b, j] if j < K else mask_token``, ``j =
    ids_restore[b, l]``, plus ``pos[l]``; differentiable in x_visible, mask_token and pos.

    x_visible: ``(B, K, Dd)``; mask_token: Dd elements (e.g. ``(Dd,)`` or ``(1, 1, Dd)``); ids_restore:
    ``(B, L)`` int64, a permutation of 0..L-1 per sample; pos: ``(L, Dd)``, ``(1, L, Dd)`` or None.
    Returns ``(B, L, Dd)``.
    """
    if x_visible.dim() != 3 or ids_restore.dim() != 2 or ids_restore.shape[0] != x_visible.shape[0]:
        raise ValueError(
            f"x_visible must be (B, K, Dd) and ids_restore (B, L); got {tuple(x_visible.shape)}, "
            f"{tuple(ids_restore.shape)}"
        )
    if ids_restore.dtype != torch.int64:
        raise ValueError(f"ids_restore must be int64, got {ids_restore.dtype}")
    d = x_visible.shape[2]
    if mask_token.numel() != d:
        raise ValueError(f"mask_token must have Dd = {d} elements, got shape {tuple(mask_token.shape)}")
    if ids_restore.shape[1] < x_visible.shape[1]:
        raise ValueError(f"ids_restore has L = {ids_restore.shape[1]} < K = {x_visible.shape[1]} positions")
    pos = _pos_2d(pos, ids_restore.shape[1], d)
    if not use_triton(x_visible):
        return unshuffle_ref(x_visible, mask_token, ids_restore, pos)
    return torch.ops.maskspec.unshuffle(x_visible, mask_token.reshape(d), ids_restore, pos)
