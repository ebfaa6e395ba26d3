"""Shared plumbing for the fast ops (Triton and C++): the Triton import guard, the one dispatch rule, device guards,
input checks and the NaN-poison hook.

Dispatch rule (one place, :func:`backend_for`, used by every fast op):

* CUDA tensors -> compiled Triton kernels (when triton is installed);
* CPU tensors, ops with a C++ version (patchify) -> the C++ extension (the reference when it is not built);
* CPU tensors, other ops, ``TRITON_INTERPRET=1`` -> the Triton kernels in Triton's interpreter (how CI tests them);
* otherwise -> the plain-PyTorch reference.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:  # optional: the package must import without triton
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
    _TRITON_ERROR = ""
except ImportError as e:  # pragma: no cover - depends on the environment
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    HAS_TRITON = False
    _TRITON_ERROR = str(e)


def interpret_mode() -> bool:
    """True when Triton kernels should run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_for(t: torch.Tensor, cpp: bool | None = None) -> str:
    """``"triton"``, ``"cpp"`` or ``"reference"``: what a fast op runs for tensor ``t`` (module docstring).
    ``cpp``: None for ops without a C++ version, else whether the extension is loaded."""
    if t.device.type == "cuda":
        return "triton" if HAS_TRITON else "reference"
    if t.device.type == "cpu":
        if cpp is not None:
            return "cpp" if cpp else "reference"
        if HAS_TRITON and interpret_mode():
            return "triton"
    return "reference"


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op without a C++ version runs the Triton kernels on ``t`` (:func:`backend_for`)."""
    return backend_for(t) == "triton"


def triton_status() -> str:
    """One line saying what the Triton ops run on this machine, and why."""
    if not HAS_TRITON:
        return f"reference (triton not importable: {_TRITON_ERROR}; pip install triton)"
    parts = []
    if torch.cuda.is_available():
        parts.append(f"CUDA tensors -> Triton {triton.__version__} kernels on {torch.cuda.get_device_name(0)}")
    else:
        parts.append(f"CUDA tensors -> Triton {triton.__version__} kernels (no CUDA device here)")
    if interpret_mode():
        parts.append("CPU tensors -> Triton interpreter (TRITON_INTERPRET=1)")
    else:
        parts.append("CPU tensors -> reference (set TRITON_INTERPRET=1 to run the kernels in the interpreter)")
    return "; ".join(parts)


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context manager around a Triton launch: makes ``t``'s CUDA device current for its duration.

    A Triton launch runs on ``torch.cuda.current_device()`` (and that device's current stream), not on the device
    of its arguments: tensors on ``cuda:1`` launched while device 0 is current would run on the wrong GPU (a
    single-process ``--device cuda:1`` never calls ``set_device``). CPU tensors (the interpreter) need no guard.
    """
    if t.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def poison_enabled() -> bool:
    """``MASKSPEC_POISON=1``: output buffers are pre-filled with NaN, so an element a kernel forgets to write
    shows up in tests instead of passing silently with whatever the allocator returned."""
    return os.environ.get("MASKSPEC_POISON", "0") == "1"


def new_empty(shape: tuple[int, ...] | list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; NaN-filled (or -1 for integers) under ``MASKSPEC_POISON=1``."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if poison_enabled():
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def check_rows(t: torch.Tensor, name: str, ndim: int) -> None:
    """Kernels address rows through their strides (so views like ``x[:, 1:]`` need no copy), but the last axis
    must be unit-stride so a row is one vectorizable run. Raise a ValueError naming the tensor otherwise."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name} must be contiguous along its last axis (stride {t.stride(-1)} given, shape "
            f"{tuple(t.shape)}); call {name}.contiguous() first"
        )


def rows_for_backward(t: torch.Tensor) -> torch.Tensor:
    """Upstream gradients come from autograd and may be any view (e.g. an expanded scalar): make the last axis
    unit-stride explicitly (a copy only when it is not)."""
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        return t.contiguous()
    return t
