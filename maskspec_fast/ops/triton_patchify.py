"""Triton kernels for the fused patchify contract of :mod:`maskspec_fast.ops.patchify_fused` (CUDA tensors).

Same results as the C++ extension: patches are bit copies in the input dtype. On CPU with ``TRITON_INTERPRET=1`` these run in
Triton's interpreter, which is how the CPU test suite checks them.

Launch choices: one program per patch (grid ``B * L``); the patch is loaded as a ``BLOCK x BLOCK`` tile with
``BLOCK = next_power_of_2(p)`` (16 for the usual patch, so no masked lanes), which is 256 elements: one warp
covers it with 8 values per thread, and more warps would only idle. Offsets are int64 so ``B * F * T`` may
exceed 2^31.
"""
from __future__ import annotations

import torch

from ._triton_utils import HAS_TRITON, on_device, tl, triton  # the one Triton import guard

__all__ = ["HAS_TRITON", "patchify_triton", "unpatchify_triton"]


def _require() -> None:
    if not HAS_TRITON:
        raise ImportError("maskspec_fast.ops.triton_patchify needs triton (pip install triton)")


if HAS_TRITON:

    @triton.jit
    def _patchify_fwd_kernel(
        spec_ptr, out_ptr,
        stride_b, stride_f, gt, n_patches,
        P: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)  # one program = one patch (b, l)
        b = pid // n_patches
        lid = pid % n_patches
        i = lid // gt
        j = lid % gt
        u = tl.arange(0, BLOCK)[:, None]
        v = tl.arange(0, BLOCK)[None, :]
        mask = (u < P) & (v < P)
        src = spec_ptr + b * stride_b + (i * P + u) * stride_f + j * P + v
        x = tl.load(src, mask=mask, other=0.0)
        dst = pid * (P * P) + u * P + v
        tl.store(out_ptr + dst, x, mask=mask)

    @triton.jit
    def _unpatchify_kernel(
        patches_ptr, out_ptr, gt, n_patches, out_f, out_t,
        P: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)  # one program = one patch, scattered back into the image
        b = pid // n_patches
        lid = pid % n_patches
        i = lid // gt
        j = lid % gt
        u = tl.arange(0, BLOCK)[:, None]
        v = tl.arange(0, BLOCK)[None, :]
        mask = (u < P) & (v < P)
        x = tl.load(patches_ptr + pid * (P * P) + u * P + v, mask=mask)
        tl.store(out_ptr + b * out_f * out_t + (i * P + u) * out_t + j * P + v, x, mask=mask)


def _check_spec(spec: torch.Tensor, patch: int) -> torch.Tensor:
    if spec.dim() != 3:
        raise ValueError(f"spec: expected 3-D (B, F, T), got {spec.dim()}-D {tuple(spec.shape)}")
    if spec.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"spec: expected float32, float16 or bfloat16, got {spec.dtype}")
    if patch < 1:
        raise ValueError(f"patch: must be >= 1, got {patch}")
    f, t = spec.shape[1:]
    if f < patch or t < patch:
        raise ValueError(f"spec: spectrogram {f} x {t} is smaller than one {patch} x {patch} patch")
    return spec if spec.stride(-1) == 1 else spec.contiguous()


def patchify_triton(spec: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """spec ``(B, F, T)`` -> patches ``(B, L, p*p)`` in spec's dtype (bit copies)."""
    _require()
    spec = _check_spec(spec, patch)
    b, f, t = spec.shape
    gf, gt = f // patch, t // patch
    n = gf * gt
    out = torch.empty(b, n, patch * patch, dtype=spec.dtype, device=spec.device)  # (B, L, p*p)
    if b * n:
        with on_device(spec):  # Triton launches on the current device
            _patchify_fwd_kernel[(b * n,)](
                spec, out, spec.stride(0), spec.stride(1), gt, n,
                P=patch, BLOCK=triton.next_power_of_2(patch), num_warps=1,
            )
    return out


def unpatchify_triton(
    patches: torch.Tensor, gf: int, gt: int, patch: int, out_f: int | None = None, out_t: int | None = None
) -> torch.Tensor:
    """patches ``(B, gf*gt, p*p)`` -> image ``(B, out_f, out_t)`` (default ``gf*p, gt*p``), zero off the grid."""
    _require()
    out_f = gf * patch if out_f is None else out_f
    out_t = gt * patch if out_t is None else out_t
    if patches.dim() != 3 or patches.shape[1] != gf * gt or patches.shape[2] != patch * patch:
        raise ValueError(f"patches: shape {tuple(patches.shape)} does not match grid ({gf}, {gt}) with patch {patch}")
    if out_f < gf * patch or out_t < gt * patch:
        raise ValueError(f"out: ({out_f}, {out_t}) cannot hold a {gf * patch} x {gt * patch} image")
    patches = patches.contiguous()
    b = patches.shape[0]
    exact = out_f == gf * patch and out_t == gt * patch
    # the kernel writes only the grid: zero the rest (the gradient of the dropped frames) up front
    alloc = torch.empty if exact else torch.zeros
    out = alloc(b, out_f, out_t, dtype=patches.dtype, device=patches.device)  # (B, F, T)
    if b * gf * gt:
        with on_device(patches):  # Triton launches on the current device
            _unpatchify_kernel[(b * gf * gt,)](
                patches, out, gt, gf * gt, out_f, out_t, P=patch, BLOCK=triton.next_power_of_2(patch), num_warps=1,
            )
    return out
