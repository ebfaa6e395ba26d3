"""``available_backends()``: which implementation each operation uses on this machine, and why; and
``compile_module()``: the one ``torch.compile`` switch the CLI (``--compile``), ``TrainConfig.compile``, ``embed`` and
the benchmarks share."""
from __future__ import annotations

import importlib.util
import os

import torch


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _cpp_status() -> str:
    try:
        from . import _C  # noqa: F401
    except ImportError as e:
        return f"not built ({e}); reinstall with a C++ compiler and CMake: pip install -e ."
    return "loaded (maskspec_fast._C)"


def available_backends() -> dict[str, dict[str, str]]:
    """Report, for the plain and the fused path, what each op runs on, plus the optional parts found.

    Returns ``{"plain": {op: impl}, "fused": {op: impl}, "components": {name: status}}``.
    """
    from .fused import resolve

    comps: dict[str, str] = {
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "triton": "installed" if _has("triton") else "not installed (pip install triton)",
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "flash_attn": "installed" if _has("flash_attn") else "not installed (pip install flash-attn, CUDA only)",
        "cpp_ext": _cpp_status(),
        "dali": "installed" if _has("nvidia.dali") else "not installed (pip install 'maskspec_fast[dali]')",
    }
    return {"plain": resolve(False).report, "fused": resolve(True).report, "components": comps}


COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def compile_module(module: torch.nn.Module, backend: str = "inductor", mode: str | None = None) -> torch.nn.Module:
    """Compile ``module``'s forward in place with ``torch.compile`` (``nn.Module.compile``) and return it.

    Why in place rather than ``torch.compile(module)``: the wrapper that returns names every parameter
    ``_orig_mod.<name>``, so checkpoints of a compiled run would not load in an eager one. In place, the module, its
    ``state_dict`` and ``save_pretrained`` are unchanged; a run may resume with or without ``--compile`` whatever the
    earlier run did. Compilation happens at the first call (and again for a new input shape or train/eval mode).
    ``backend``: ``inductor`` (generated kernels: what is timed), ``aot_eager`` (graph capture and AOTAutograd
    with eager kernels: a quick plumbing check on a CPU), ``eager``.
    """
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"unknown compile backend {backend!r}; choose from {', '.join(COMPILE_BACKENDS)}")
    module.compile(backend=backend, mode=mode)
    return module


def format_backends(info: dict[str, dict[str, str]] | None = None) -> str:
    """Human-readable multi-line version of :func:`available_backends`."""
    info = info or available_backends()
    lines = []
    for section, table in info.items():
        lines.append(f"[{section}]")
        lines.extend(f"  {k:21s} {str(v).replace(chr(10), '; ')}" for k, v in table.items())
    return "\n".join(lines)
