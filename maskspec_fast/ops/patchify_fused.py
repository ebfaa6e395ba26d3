"""Fused patchify and unpatchify as ``torch.library`` custom ops: the fast ``patchify`` / ``patch_tokens`` of the
model's op table (:mod:`maskspec_fast.fused`).

Same contract as the references (:func:`maskspec_fast.ops.patchify.patchify_ref`, :func:`~.patchify.unpatchify`),
with ``p`` the patch size, ``gf = F // p``, ``gt = T // p`` and ``L = gf * gt``::

    patches[b, i*gt + j, u*p + v] = spec[b, i*p + u, j*p + v]        (frames past the last whole patch dropped)

The model reads the input once: the same patches feed the token embedding (a Linear, :func:`patch_tokens`) and
the loss targets (the loss kernels normalize them per patch themselves, so no separate target op exists).

What runs where (the package's one dispatch rule, :func:`~._triton_utils.backend_for`; see :func:`status`):

* CPU: the C++ extension ``maskspec_fast._C`` (OpenMP over batch x patches); when it is not built, the PyTorch
  reference, with one ``RuntimeWarning`` the first time.
* CUDA: the Triton kernels of :mod:`maskspec_fast.ops.triton_patchify`; the reference without Triton.

Dtypes: float32, float16, bfloat16. Patches keep the input dtype and are bit-exact copies.

Autograd: the gradient of ``patches`` w.r.t. ``spec`` is the unpatchify of the upstream gradient into the
input's shape, zero in the dropped frames.
"""
from __future__ import annotations

import warnings
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.dlpack import to_dlpack

from ._triton_utils import HAS_TRITON, backend_for
from .patchify import as_image, patchify_ref
from .patchify import unpatchify as unpatchify_ref

__all__ = [
    "patch_tokens_fused",
    "patchify_fused",
    "status",
    "unpatchify_fused",
]

_ABI = 2  # must equal kAbi in csrc/patchify.cpp; a stale build is treated as missing

_ext: ModuleType | None = None
_ext_error: str | None = None
_ext_tried = False
_warned: set[str] = set()


def _load_ext() -> ModuleType | None:
    """Import ``maskspec_fast._C`` once, quietly; remember why it is unusable."""
    global _ext, _ext_error, _ext_tried
    if not _ext_tried:
        _ext_tried = True
        try:
            from .. import _C

            if getattr(_C, "__abi__", None) != _ABI:
                raise ImportError(f"stale build (ABI {getattr(_C, '__abi__', None)}, expected {_ABI})")
            _ext = _C
        except ImportError as e:
            _ext_error = str(e)
    return _ext


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _cpu_ext() -> ModuleType | None:
    ext = _load_ext()
    if ext is None:
        _warn_once(
            "cpu",
            f"maskspec_fast._C is not available ({_ext_error}); fused patchify uses the PyTorch reference. "
            "Build it with `pip install -e .` (needs CMake and a C++ compiler).",
        )
    return ext


def _cuda_triton() -> ModuleType | None:
    if not HAS_TRITON:
        _warn_once("cuda", "triton is not installed; fused patchify on CUDA uses the PyTorch reference "
                           "(pip install triton)")
        return None
    from . import triton_patchify

    return triton_patchify


def _kernels(t: torch.Tensor) -> tuple[str, ModuleType | None]:
    """The package's one dispatch rule (:func:`~._triton_utils.backend_for`) with this op's C++ version:
    ``("cpp", _C)``, ``("triton", triton_patchify)`` or ``("reference", None)`` for tensor ``t``."""
    ext = _cpu_ext() if t.device.type == "cpu" else None
    backend = backend_for(t, cpp=ext is not None)
    if backend == "cpp":
        return backend, ext
    if backend == "triton":
        tri = _cuda_triton()
        if tri is not None:
            return backend, tri
    return "reference", None


def _threads() -> int:
    # follow torch's intra-op setting, so torch.set_num_threads governs the extension too
    return torch.get_num_threads()


def _dl(t: torch.Tensor):
    return to_dlpack(t.detach())


def _time_unit_stride(spec: torch.Tensor) -> torch.Tensor:
    # the kernels take any batch/row strides but need contiguous time frames
    return spec if spec.stride(-1) == 1 or spec.shape[-1] == 1 else spec.contiguous()


def _owned(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    # custom ops may not return views of their inputs; the reference patchify is a view when gt == 1
    return out.clone() if out.untyped_storage().data_ptr() == src.untyped_storage().data_ptr() else out


# ------------------------------------------------------------------------------------------------------------
# Implementations behind the ops. spec is always 3-D (B, F, T) here.


def _patchify_impl(spec: torch.Tensor, patch: int) -> torch.Tensor:
    b, f, t = spec.shape
    n = (f // patch) * (t // patch)
    backend, kernels = _kernels(spec)
    if backend == "cpp":
        spec = _time_unit_stride(spec)
        out = torch.empty(b, n, patch * patch, dtype=spec.dtype)  # (B, L, p*p)
        kernels.patchify(_dl(spec), patch, _dl(out), _threads())
        return out
    if backend == "triton":
        return kernels.patchify_triton(spec, patch)
    return _owned(patchify_ref(spec, patch), spec)


def _unpatchify_impl(patches: torch.Tensor, gf: int, gt: int, patch: int, out_f: int, out_t: int) -> torch.Tensor:
    b = patches.shape[0]
    backend, kernels = _kernels(patches)
    if backend == "cpp":
        out = torch.empty(b, out_f, out_t, dtype=patches.dtype)  # (B, F, T)
        kernels.unpatchify(_dl(patches.contiguous()), gf, gt, patch, _dl(out), _threads())
        return out
    if backend == "triton":
        return kernels.unpatchify_triton(patches, gf, gt, patch, out_f, out_t)
    img = unpatchify_ref(patches, (gf, gt), patch)  # (B, gf*p, gt*p)
    if (out_f, out_t) == tuple(img.shape[1:]):
        return _owned(img.contiguous(), patches)
    out = patches.new_zeros(b, out_f, out_t)
    out[:, : gf * patch, : gt * patch] = img
    return out


# ------------------------------------------------------------------------------------------------------------
# torch.library ops: fake (meta) kernels for torch.compile / export, autograd formulas.


@torch.library.custom_op("maskspec::patchify", mutates_args=())
def _patchify_op(spec: torch.Tensor, patch: int) -> torch.Tensor:
    return _patchify_impl(spec, patch)


@torch.library.custom_op("maskspec::unpatchify", mutates_args=())
def _unpatchify_op(patches: torch.Tensor, gf: int, gt: int, patch: int, out_f: int, out_t: int) -> torch.Tensor:
    return _unpatchify_impl(patches, gf, gt, patch, out_f, out_t)


@_patchify_op.register_fake
def _(spec, patch):
    b, f, t = spec.shape
    return spec.new_empty(b, (f // patch) * (t // patch), patch * patch)


@_unpatchify_op.register_fake
def _(patches, gf, gt, patch, out_f, out_t):
    return patches.new_empty(patches.shape[0], out_f, out_t)


def _patchify_setup(ctx, inputs, output):
    spec, patch = inputs[0], inputs[1]
    ctx.grid_shape = (spec.shape[1], spec.shape[2], patch)


def _patchify_backward(ctx, grad):
    f, t, p = ctx.grid_shape
    g = None if grad is None else _unpatchify_op(grad.contiguous(), f // p, t // p, p, f, t)  # (B, F, T)
    return g, None


_patchify_op.register_autograd(_patchify_backward, setup_context=_patchify_setup)


def _unpatchify_setup(ctx, inputs, output):
    ctx.grid = (inputs[1], inputs[2], inputs[3])


def _unpatchify_backward(ctx, grad):
    gf, gt, p = ctx.grid
    g = _patchify_op(grad[:, : gf * p, : gt * p], p)  # (B, L, p*p); the zero-filled border gets no gradient
    return g, None, None, None, None, None


_unpatchify_op.register_autograd(_unpatchify_backward, setup_context=_unpatchify_setup)


# ------------------------------------------------------------------------------------------------------------
# Public functions.


def _as_bft(spec: torch.Tensor) -> torch.Tensor:
    return spec if spec.dim() == 3 else as_image(spec)[:, 0]  # (B, F, T), a view


def patchify_fused(spec: torch.Tensor, patch: int = 16) -> torch.Tensor:
    """Patchify ``spec``: ``(B, F, T)`` or ``(B, 1, F, T)``, float32/float16/bfloat16 -> patches ``(B, L, p*p)``
    in the input dtype, bit-identical to :func:`~.patchify.patchify_ref`; differentiable."""
    return _patchify_op(_as_bft(spec), patch)


def unpatchify_fused(patches: torch.Tensor, grid: tuple[int, int], patch: int = 16) -> torch.Tensor:
    """Inverse of :func:`patchify_fused`: ``(B, gf*gt, p*p)`` -> ``(B, gf*p, gt*p)``; differentiable."""
    gf, gt = int(grid[0]), int(grid[1])
    if patches.dim() != 3 or patches.shape[1] != gf * gt or patches.shape[2] != patch * patch:
        raise ValueError(f"patches {tuple(patches.shape)} do not match grid {grid} with patch {patch}")
    return _unpatchify_op(patches, gf, gt, patch, gf * patch, gt * patch)


def patch_tokens_fused(img: torch.Tensor, patch_embed: nn.Module) -> torch.Tensor:
    """Patch embedding as patchify + linear: img ``(B, 1, F, T)`` -> tokens ``(B, L, D)``.

    ``tokens = patchify_fused(img) @ W.reshape(D, p*p).T + bias`` with ``W = patch_embed.proj.weight``
    ``(D, 1, p, p)``: the same map as the stride-``p`` convolution (equal up to float summation order).
    """
    proj = patch_embed.proj
    p = proj.kernel_size[0]
    if tuple(proj.kernel_size) != (p, p) or tuple(proj.stride) != (p, p) or proj.in_channels != 1:
        raise ValueError(
            f"patch_embed.proj must be Conv2d(1, D, p, stride=p), got kernel {proj.kernel_size}, "
            f"stride {proj.stride}, in_channels {proj.in_channels}"
        )
    patches = patchify_fused(img, p)  # (B, L, p*p)
    return F.linear(patches, proj.weight.flatten(1), proj.bias)  # (B, L, D)


def status() -> str:
    """One line saying what the fused patchify runs on here per device, and why (``"cpu: ...; cuda: ..."``)."""
    ext = _load_ext()
    if ext is not None:
        omp = f"OpenMP, up to {torch.get_num_threads()} threads" if ext.has_openmp else "no OpenMP, 1 thread"
        cpu = f"C++ extension maskspec_fast._C ({omp})"
    else:
        cpu = f"PyTorch reference (maskspec_fast._C not available: {_ext_error}; build with `pip install -e .`)"
    if not HAS_TRITON:
        cuda = "PyTorch reference (triton not installed)"
    else:
        cuda = "Triton kernels (maskspec_fast.ops.triton_patchify)"
        if not torch.cuda.is_available():
            cuda += " (no CUDA device here)"
    return f"cpu: {cpu}; cuda: {cuda}"


def patch_tokens(img: torch.Tensor, patches: torch.Tensor | None, patch_embed: nn.Module) -> torch.Tensor:
    """Fast token embedding (the op table's ``patch_tokens``): ``patches @ W.T + b`` on patches already cut
    (``(B, L, p*p)``, read once for tokens and targets), else :func:`patch_tokens_fused` on ``img``."""
    if patches is None:
        return patch_tokens_fused(img, patch_embed)
    proj = patch_embed.proj
    return F.linear(patches, proj.weight.flatten(1), proj.bias)  # (B, L, D) = Conv2d(1, D, p, stride p)


patchify = patchify_fused  # the op table's fast ``patchify`` (see :func:`patchify_fused`)
__all__ += ["patch_tokens", "patchify"]
