"""Compile every Triton kernel ahead of time for real GPU architectures, on a machine without a GPU.

GPUs are lent rarely, so what can be checked without one is checked in CI: that each kernel lowers through
Triton's whole NVIDIA pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin with Triton's bundled ``ptxas``) for
sm_80 (A100) and sm_90 (H100/H200), and that ``ptxas`` needs no register spills. The interpreter the kernel tests
run under checks the arithmetic, not this.

How a launch is reproduced exactly: the launchers (``gather_visible_forward`` ...) are called on CPU tensors with
the model's shapes while each kernel is swapped for a recorder, so the grid, arguments, constexprs and
``num_warps`` are the launcher's own (no second copy of the launch code to drift). Each recorded launch is then
specialized the way ``JITFunction.run`` does it at a real launch (argument types, 16-byte alignment and
divisibility hints, ``int == 1`` constants) and handed to ``triton.compile`` with a ``GPUTarget``.

    TRITON_INTERPRET=0 python -m maskspec_fast.ops.triton_aot --arch 80,90 --dtypes fp32,bf16,fp16 [--json out]

Must run with ``TRITON_INTERPRET=0`` (under the interpreter ``@triton.jit`` yields objects that cannot be
compiled); ``tests/test_triton_aot.py`` runs it in a subprocess for that reason.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..config import ModelConfig
from ._triton_utils import HAS_TRITON
from .masking import masking_ids, num_visible

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Launch:
    """One recorded kernel launch: what ``kernel[grid](*args, **kwargs)`` was called with."""

    module: str
    kernel: str
    case: str  # which launcher call, e.g. "gather_visible_backward pos_grad"
    dtype: str
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Compiled:
    """Result of compiling one launch for one architecture (registers per thread, spills from ptxas -v)."""

    kernel: str
    case: str
    dtype: str
    arch: str
    ok: bool
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    num_warps: int | None = None
    seconds: float = 0.0
    error: str = ""
    constexprs: dict[str, Any] = field(default_factory=dict)


class _Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``rec[grid](*args, **kwargs)`` stores the call, runs nothing."""

    def __init__(self, module: str, name: str, sink: list[Launch], tag: Callable[[], tuple[str, str]],
                 on_launch: Callable[[Launch], None] | None = None):
        self.module, self.name, self.sink, self.tag, self.on_launch = module, name, sink, tag, on_launch

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            case, dtype = self.tag()
            g = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
            self.sink.append(Launch(self.module, self.name, case, dtype, g, args, kwargs))
            if self.on_launch is not None:
                self.on_launch(self.sink[-1])

        return call


def _kernel_modules() -> dict[str, Any]:
    from . import triton_gather, triton_masked_mse, triton_patchify

    return {"triton_gather": triton_gather, "triton_masked_mse": triton_masked_mse,
            "triton_patchify": triton_patchify}


def jit_functions() -> dict[str, list[str]]:
    """Names of the ``@triton.jit`` objects of each kernel module: kernels (``*_kernel``) and device helpers.

    ``KernelInterface`` covers both forms ``@triton.jit`` returns: ``JITFunction`` and, under
    ``TRITON_INTERPRET=1``, ``InterpretedFunction``."""
    from triton.runtime.jit import KernelInterface

    out = {}
    for mname, mod in _kernel_modules().items():
        out[mname] = sorted(n for n, v in vars(mod).items() if isinstance(v, KernelInterface))
    return out


@contextlib.contextmanager
def record_launches(sink: list[Launch], tag: Callable[[], tuple[str, str]],
                    on_launch: Callable[[Launch], None] | None = None) -> Iterator[None]:
    """Swap every ``*_kernel`` of the kernel modules for a :class:`_Recorder` for the duration; ``on_launch`` is
    called at each launch, while the launcher's context (e.g. its device guard) is still open."""
    saved = []
    try:
        for mname, names in jit_functions().items():
            mod = _kernel_modules()[mname]
            for n in names:
                if n.endswith("_kernel"):
                    saved.append((mod, n, getattr(mod, n)))
                    setattr(mod, n, _Recorder(mname, n, sink, tag, on_launch))
        yield
    finally:
        for mod, n, fn in saved:
            setattr(mod, n, fn)


def _launcher_calls(cfg: ModelConfig, batch: int, dt: torch.dtype) -> list[tuple[str, Callable[[], object]]]:
    """``(case, call)`` for every launcher branch at the config's shapes, all tensors in ``dt`` (see
    :func:`model_launches`)."""
    from . import triton_gather as tg
    from . import triton_masked_mse as tm
    from . import triton_patchify as tp

    n, d, dd, p = cfg.num_patches, cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_dim
    k = num_visible(n, cfg.mask_ratio)
    m = n - k
    ps = cfg.patch_size
    gf, gt = cfg.n_mels // ps, cfg.frames // ps
    _, ids_restore, ids_keep, ids_masked = masking_ids(torch.rand(batch, n), k)
    mask = torch.ones(batch, n)  # weights of the fused loss (fp32, as the launcher hands a bool mask over)
    x = torch.empty(batch, n, d, dtype=dt)
    pos = torch.empty(1, 1 + n, d, dtype=dt)[0, 1:]  # (L, D) view, row stride D
    gout = torch.empty(batch, k, d, dtype=dt)
    xv = torch.empty(batch, 1 + k, dd, dtype=dt)[:, 1:]  # (B, K, Dd) view
    tok = torch.empty(dd, dtype=dt)
    dpos = torch.empty(1, 1 + n, dd, dtype=dt)[0, 1:]
    dgout = torch.empty(batch, n, dd, dtype=dt)
    pred = torch.empty(batch, n, p, dtype=dt)
    target = torch.empty(batch, n, p, dtype=dt)
    pred_m = torch.empty(batch, m, p, dtype=dt)
    spec = torch.empty(batch, cfg.n_mels, cfg.frames, dtype=dt)
    patches = torch.empty(batch, n, p, dtype=dt)
    return [
        ("gather_visible_forward pos", lambda: tg.gather_visible_forward(x, ids_keep, pos)),
        ("gather_visible_forward", lambda: tg.gather_visible_forward(x, ids_keep, None)),
        ("gather_visible_backward", lambda: tg.gather_visible_backward(gout, ids_keep, n, dt, False, dt)),
        ("gather_visible_backward pos_grad", lambda: tg.gather_visible_backward(gout, ids_keep, n, dt, True, dt)),
        ("unshuffle_forward pos", lambda: tg.unshuffle_forward(xv, tok, ids_restore, dpos)),
        ("unshuffle_backward", lambda: tg.unshuffle_backward(dgout, ids_restore, k, dt, dt, False, dt)),
        ("unshuffle_backward pos_grad", lambda: tg.unshuffle_backward(dgout, ids_restore, k, dt, dt, True, dt)),
        ("masked_mse pred_grad skip_zero",
         lambda: tm.masked_mse_forward(pred, target, mask, None, True, True, False, True)),
        ("masked_mse pred+target_grad",
         lambda: tm.masked_mse_forward(pred, target, mask, None, True, True, True, False)),
        ("masked_mse_on_masked pred_grad",
         lambda: tm.masked_mse_forward(pred_m, target, None, ids_masked, True, True, False, False)),
        ("masked_mse_on_masked no norm_pix",
         lambda: tm.masked_mse_forward(pred_m, target, None, ids_masked, False, True, False, False)),
        ("patchify", lambda: tp.patchify_triton(spec, ps)),
        ("unpatchify", lambda: tp.unpatchify_triton(patches, gf, gt, ps)),
    ]


def model_launches(preset: str = "base", batch: int = 64, dtypes: list[str] | None = None,
                   frames: int | None = None, on_launch: Callable[[Launch], None] | None = None) -> list[Launch]:
    """Record every launch the model's fused path makes (plus the other constexpr branches) at a preset's shapes.

    Shapes come from the config: L = num_patches (496 for 128 x 992), K = num_visible(L, mask_ratio) (124),
    M = L - K, D = embed_dim, Dd = decoder_embed_dim, P = patch_dim. Views are the model's: ids_keep / ids_masked
    are column slices of ids_shuffle (row stride L), pos a row slice of the (1, 1+L, D) table, the decoder's
    visible tokens ``x[:, 1:]`` of (B, 1+K, Dd).
    """
    cfg = ModelConfig.from_preset(preset, **({"frames": frames} if frames else {}))
    sink: list[Launch] = []
    state = {"case": "", "dtype": ""}
    with record_launches(sink, lambda: (state["case"], state["dtype"]), on_launch):
        for dname in dtypes or list(DTYPES):
            state["dtype"] = dname
            for case, fn in _launcher_calls(cfg, batch, DTYPES[dname]):
                state["case"] = case
                fn()
    return sink


_PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas_log(log: str) -> dict[str, int | None]:
    """Registers per thread, stack frame and spill bytes from ``ptxas -v`` output (one kernel per log)."""
    out: dict[str, int | None] = {}
    for key, rx in _PTXAS.items():
        hit = rx.search(log)
        out[key] = int(hit.group(1)) if hit else None
    return out


def compile_launch(launch: Launch, capability: int) -> Compiled:
    """Specialize ``launch`` as ``JITFunction.run`` would and compile it for ``sm_<capability>``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    fn = getattr(_kernel_modules()[launch.module], launch.kernel)
    res = Compiled(launch.kernel, launch.case, launch.dtype, f"sm_{capability}", ok=False)
    if not isinstance(fn, JITFunction):
        res.error = f"{launch.kernel} is {type(fn).__name__}, not a JITFunction (run with TRITON_INTERPRET=0)"
        return res
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    kwargs = dict(launch.kwargs, debug=False)
    if hasattr(triton.knobs.compilation, "instrumentation_mode"):  # JITFunction.run passes it too
        kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    res.constexprs = {fn.arg_names[path[0]]: v for path, v in constexprs.items()}
    log = io.StringIO()
    nv, comp = triton.knobs.nvidia, triton.knobs.compilation
    saved = (nv.dump_ptxas_log, comp.always_compile)
    nv.dump_ptxas_log, comp.always_compile = True, True  # ptxas prints -v; a cache hit would skip ptxas
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=target, options=options.__dict__)
    except Exception as e:  # reported per launch: one broken kernel must not hide the others
        res.error = f"{type(e).__name__}: {str(e)[:2000]}"
        return res
    finally:
        nv.dump_ptxas_log, comp.always_compile = saved
        res.seconds = time.perf_counter() - t0
    res.ok = "cubin" in kernel.asm
    res.shared_bytes = int(kernel.metadata.shared)
    res.num_warps = int(kernel.metadata.num_warps)
    for key, v in parse_ptxas_log(log.getvalue()).items():
        setattr(res, key, v)
    if not res.ok:
        res.error = "no cubin produced"
    return res


def ptxas_path() -> str | None:
    """Path of Triton's bundled (or ``TRITON_PTXAS_PATH``) ptxas, or None when it is absent."""
    import os

    import triton

    try:
        tool = triton.knobs.nvidia.ptxas
        return tool.path if tool is not None and os.path.exists(tool.path) else None
    except Exception:  # the knob raises when no binary is found
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="80,90", help="comma list of compute capabilities (80 = A100, 90 = H100)")
    ap.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma list of {list(DTYPES)}")
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", default=None, help="write the results here ('-' for stdout, table to stderr)")
    args = ap.parse_args(argv)
    if not HAS_TRITON:
        print("triton is not installed (pip install triton)", file=sys.stderr)
        return 2
    table = sys.stderr if args.json == "-" else sys.stdout
    launches = model_launches(args.preset, args.batch, args.dtypes.split(","))
    results = [compile_launch(la, int(a)) for a in args.arch.split(",") for la in launches]
    import triton

    print(f"triton {triton.__version__}, ptxas {ptxas_path()}, preset {args.preset}, batch {args.batch}",
          file=table)
    print(f"{'kernel':28s} {'case':34s} {'dtype':5s} {'arch':6s} {'regs':>4s} {'spill':>5s} {'smem':>6s} "
          f"{'warps':>5s} {'s':>5s}", file=table)
    for r in results:
        spill = None if r.spill_stores is None else (r.spill_stores or 0) + (r.spill_loads or 0)
        print(f"{r.kernel:28s} {r.case:34s} {r.dtype:5s} {r.arch:6s} {r.registers!s:>4s} {spill!s:>5s} "
              f"{r.shared_bytes!s:>6s} {r.num_warps!s:>5s} {r.seconds:5.2f}" + (f"  FAILED {r.error}" if r.error else ""),
              file=table)
    payload = {"triton": triton.__version__, "preset": args.preset, "batch": args.batch,
               "jit_functions": jit_functions(), "results": [asdict(r) for r in results]}
    if args.json == "-":
        print(json.dumps(payload, default=str))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=1, default=str)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
