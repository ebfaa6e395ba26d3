"""Benchmark the Triton gathers and masked MSE against their references (eager and torch.compile).

Times forward, backward and full (forward + backward) at MaskSpec-base shapes (L = 496 patches, K = 124 kept,
encoder D = 768, decoder Dd = 512, P = 16*16 = 256 values per patch), after warm-up, with synchronization,
reporting the median and p20/p80 over iterations. Throughput is effective bandwidth: the bytes the op must move
at least (same count for every implementation) over the median time, and on GPU its fraction of the measured
device-to-device copy bandwidth.

On CPU only the reference rows run (small default batch) - Triton rows need a CUDA GPU (the interpreter is for
tests, not timing), except with ``TRITON_INTERPRET=1``, where asked-for Triton rows run in the interpreter as a
plumbing check (``gpu_check.sh --dry-run``); their times mean nothing.

    python benchmarks/kernels.py --batch 64 --dtype bf16 --results-file results/kernels.json
    python benchmarks/kernels.py --impls ref,triton --rows-file out/kernels.jsonl   # rows appended as they finish
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from _common import COMPILE_BACKENDS, RowSink, compile_fn, git_commit  # noqa: E402

from maskspec_fast.config import ModelConfig  # noqa: E402
from maskspec_fast.ops._triton_utils import interpret_mode  # noqa: E402
from maskspec_fast.ops.gather import gather_visible_ref, unshuffle_ref  # noqa: E402
from maskspec_fast.ops.masked_mse import masked_mse_on_masked_ref, masked_mse_ref  # noqa: E402
from maskspec_fast.ops.masking import masking_ids, num_visible  # noqa: E402
from maskspec_fast.ops.triton_gather import gather_visible, triton_status, unshuffle  # noqa: E402
from maskspec_fast.ops.triton_masked_mse import masked_mse, masked_mse_on_masked  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Row:
    op: str
    impl: str
    mode: str  # fwd / bwd / full
    median_ms: float
    p20_ms: float
    p80_ms: float
    gbps: float
    pct_copy_bw: float | None


def _quantiles(times_ms: list[float]) -> tuple[float, float, float]:
    t = torch.tensor(times_ms, dtype=torch.float64)
    q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return float(q[0]), float(q[1]), float(q[2])


def _time(run: Callable[[], object], setup: Callable[[], object] | None, device: torch.device, warm: int,
          iters: int) -> tuple[float, float, float]:
    """Time ``run`` (ms per call); ``setup`` runs untimed before each call (e.g. the forward before a backward).
    CUDA: events around each call; CPU: perf_counter."""
    for _ in range(warm):
        state = setup() if setup else None
        run() if state is None else run(state)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        pairs = []
        for _ in range(iters):
            state = setup() if setup else None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run() if state is None else run(state)
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in pairs]
    else:
        for _ in range(iters):
            state = setup() if setup else None
            t0 = time.perf_counter()
            run() if state is None else run(state)
            times.append((time.perf_counter() - t0) * 1e3)
    return _quantiles(times)


def copy_bandwidth_gbps(device: torch.device, warm: int, iters: int) -> float | None:
    """Device-to-device copy bandwidth (read + write bytes / s) of a 512 MiB buffer; None on CPU."""
    if device.type != "cuda":
        return None
    src = torch.empty(256 * 2**20, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    med, _, _ = _time(lambda: dst.copy_(src), None, device, warm, iters)
    return 2 * src.numel() * src.element_size() / (med * 1e-3) / 1e9


def build_cases(batch: int, dtype: torch.dtype, device: torch.device, preset: str = "base",
                frames: int | None = None) -> dict[str, dict]:
    """Inputs, the implementations and the nominal bytes of each op, sizes from the model config preset (and the
    input's frames, which set L)."""
    cfg = ModelConfig.from_preset(preset, **({"frames": frames} if frames else {}))
    n, d, dd, p = cfg.num_patches, cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_dim  # 496, 768, 512, 256
    k = num_visible(n, cfg.mask_ratio)  # 124
    es = torch.empty((), dtype=dtype).element_size()
    mask, ids_restore, ids_keep, ids_masked = masking_ids(torch.rand(batch, n, device=device), k)
    m = n - k

    x = torch.randn(batch, n, d, dtype=dtype, device=device, requires_grad=True)
    pos = torch.randn(n, d, dtype=dtype, device=device)  # frozen sin-cos table, as in the model
    xv = torch.randn(batch, k, dd, dtype=dtype, device=device, requires_grad=True)
    tok = torch.randn(dd, dtype=dtype, device=device, requires_grad=True)
    dpos = torch.randn(n, dd, dtype=dtype, device=device)
    pred = torch.randn(batch, n, p, dtype=dtype, device=device, requires_grad=True)
    target = torch.randn(batch, n, p, dtype=dtype, device=device)
    pred_m = torch.randn(batch, m, p, dtype=dtype, device=device, requires_grad=True)
    mask = mask.to(dtype)

    def bytes_(fwd: float, bwd: float) -> dict[str, float]:
        return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}

    return {
        "gather_visible": {
            "shape": f"x ({batch}, {n}, {d}) -> ({batch}, {k}, {d})",
            "leaves": [x],
            "ref": lambda: gather_visible_ref(x, ids_keep, pos),
            "triton": lambda: gather_visible(x, ids_keep, pos),
            # fwd: read kept rows + pos table, write out; bwd: read grad_out, write grad_x (B, L, D)
            "bytes": bytes_((2 * batch * k * d + n * d) * es, (batch * k * d + batch * n * d) * es),
        },
        "unshuffle": {
            "shape": f"x_visible ({batch}, {k}, {dd}) -> ({batch}, {n}, {dd})",
            "leaves": [xv, tok],
            "ref": lambda: unshuffle_ref(xv, tok, ids_restore, dpos),
            "triton": lambda: unshuffle(xv, tok, ids_restore, dpos),
            # fwd: read visible rows + pos, write (B, L, Dd); bwd: read grad_out, write grad_x_visible
            "bytes": bytes_((batch * k * dd + n * dd + batch * n * dd) * es, (batch * n * dd + batch * k * dd) * es),
        },
        "masked_mse": {
            "shape": f"pred/target ({batch}, {n}, {p}), {m} masked",
            "leaves": [pred],
            "ref": lambda: masked_mse_ref(pred, target, mask),
            "triton": lambda: masked_mse(pred, target, mask),
            # fwd: read pred + target; bwd: write grad_pred
            "bytes": bytes_(2 * batch * n * p * es, batch * n * p * es),
        },
        "masked_mse_on_masked": {
            "shape": f"pred ({batch}, {m}, {p}), target ({batch}, {n}, {p})",
            "leaves": [pred_m],
            "ref": lambda: masked_mse_on_masked_ref(pred_m, target, ids_masked),
            "triton": lambda: masked_mse_on_masked(pred_m, target, ids_masked),
            "bytes": bytes_(2 * batch * m * p * es, batch * m * p * es),
        },
    }


def bench_impl(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor], device: torch.device, warm: int,
               iters: int) -> dict[str, tuple[float, float, float]]:
    def zero_grads():
        for t in leaves:
            t.grad = None

    probe = fn()
    grad = torch.randn_like(probe) if probe.dim() else torch.ones_like(probe)
    del probe

    def fwd():
        with torch.no_grad():
            return fn()

    def setup_bwd():
        zero_grads()
        return fn()

    def bwd(out):
        out.backward(grad)

    def full():
        zero_grads()
        fn().backward(grad)

    return {
        "fwd": _time(fwd, None, device, warm, iters),
        "bwd": _time(bwd, setup_bwd, device, warm, iters),
        "full": _time(full, None, device, warm, iters),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 64 on GPU, 2 on CPU)")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--num-warm-iter", type=int, default=None, help="warm-up iterations (default 10 GPU, 2 CPU)")
    ap.add_argument("--num-bench-iter", type=int, default=None, help="timed iterations (default 50 GPU, 5 CPU)")
    ap.add_argument("--impls", default="auto",
                    help="comma list of ref,compiled,triton (default: all three on GPU, ref on CPU)")
    ap.add_argument("--preset", default="base", help="model config preset giving the sizes (default base)")
    ap.add_argument("--frames", type=int, default=None, help="input frames (default: the preset's 992, L = 496)")
    ap.add_argument("--ops", default="gather_visible,unshuffle,masked_mse,masked_mse_on_masked")
    ap.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default="inductor",
                    help="backend of the compiled rows (aot_eager: a CPU plumbing check without codegen)")
    ap.add_argument("--results-file", default=None, help="write JSON results here")
    ap.add_argument("--rows-file", default=None, help="append each row to this JSON-lines file as it finishes")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    if on_gpu and device.index is not None:
        torch.cuda.set_device(device)  # torch.compile, events and the copy bandwidth probe follow the current device
    batch = args.batch or (64 if on_gpu else 2)
    dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    warm = args.num_warm_iter if args.num_warm_iter is not None else (10 if on_gpu else 2)
    iters = args.num_bench_iter if args.num_bench_iter is not None else (50 if on_gpu else 5)
    impls = ["ref", "compiled", "triton"] if args.impls == "auto" and on_gpu else (
        ["ref"] if args.impls == "auto" else args.impls.split(","))
    if not on_gpu and "triton" in impls and interpret_mode():
        print("note: Triton rows in the interpreter (TRITON_INTERPRET=1): a plumbing check, the times mean nothing")
    elif not on_gpu and "triton" in impls:
        print("note: Triton rows need a CUDA GPU (the interpreter is for tests, not timing); skipping them")
        impls = [i for i in impls if i != "triton"]
    if not on_gpu:
        print("note: CPU run: reference rows only unless --impls says otherwise; Triton rows need a GPU")

    device_name = torch.cuda.get_device_name(device) if on_gpu else (platform.processor() or platform.machine())
    print(f"device: {device_name} | torch {torch.__version__} | dtype {str(dtype).replace('torch.', '')} | "
          f"batch {batch} | warm {warm} | iters {iters}")
    print(f"triton: {triton_status()}")
    copy_bw = copy_bandwidth_gbps(device, warm, iters)
    if copy_bw:
        print(f"measured copy bandwidth: {copy_bw:.0f} GB/s")

    torch.manual_seed(0)
    cases = build_cases(batch, dtype, device, args.preset, args.frames)
    sink = RowSink(args.rows_file, "kernels", {
        "device": device_name, "torch": torch.__version__, "triton": _triton_version(), "commit": git_commit(),
        "dtype": str(dtype).replace("torch.", ""), "batch": batch, "preset": args.preset, "frames": args.frames, "num_warm_iter": warm,
        "num_bench_iter": iters, "copy_bandwidth_gbps": copy_bw, "compile_backend": args.compile_backend,
        "shapes": {op: cases[op]["shape"] for op in args.ops.split(",")}})
    rows: list[Row] = []
    header = f"{'op':22s} {'impl':9s} {'mode':5s} {'median ms':>10s} {'p20':>9s} {'p80':>9s} {'GB/s':>8s} {'%copy':>6s}"
    print(header)
    print("-" * len(header))
    for op in args.ops.split(","):
        case = cases[op]
        for impl in impls:
            if impl == "compiled":
                fn = compile_fn(case["ref"], args.compile_backend)
            else:
                fn = case[impl]
            res = bench_impl(fn, case["leaves"], device, warm, iters)
            for mode, (med, p20, p80) in res.items():
                gbps = case["bytes"][mode] / (med * 1e-3) / 1e9
                pct = 100 * gbps / copy_bw if copy_bw else None
                rows.append(Row(op, impl, mode, med, p20, p80, gbps, pct))
                sink.write(asdict(rows[-1]))
                pct_s = f"{pct:6.1f}" if pct is not None else "     -"
                print(f"{op:22s} {impl:9s} {mode:5s} {med:10.4f} {p20:9.4f} {p80:9.4f} {gbps:8.1f} {pct_s}", flush=True)
        print(f"  ({op}: {case['shape']})")

    if args.results_file:
        out = {
            "device": device_name,
            "device_type": device.type,
            "torch": torch.__version__,
            "triton": _triton_version(),
            "commit": git_commit(),
            "dtype": str(dtype).replace("torch.", ""),
            "batch": batch,
            "preset": args.preset,
            "num_warm_iter": warm,
            "num_bench_iter": iters,
            "copy_bandwidth_gbps": copy_bw,
            "shapes": {op: cases[op]["shape"] for op in args.ops.split(",")},
            "rows": [asdict(r) for r in rows],
        }
        path = Path(args.results_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
    return 0


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
