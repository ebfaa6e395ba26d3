"""Shared benchmark helpers: timing with warm-up and synchronization, spread, environment record, JSON output,
rows appended to a JSON-lines file as they finish, and the torch.compile switch."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> dict[str, float]:
    """Run ``fn`` ``warmup`` times untimed, then ``iters`` timed; returns median / p20 / p80 / mean in seconds."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    # inclusive: p20/p80 interpolate between measured times (the default extrapolates, below 0 with few iters)
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) >= 2 else [times[0]] * 4
    return {"median_s": statistics.median(times), "p20_s": q[0], "p80_s": q[3], "mean_s": statistics.fmean(times),
            "iters": iters}


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)",
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter for this process (Linux clear_refs '5'); returns current RSS bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str))
        print(f"wrote {path}")


class RowSink:
    """Appends each result row to a JSON-lines file the moment it is measured, so a run cut short (a step's time
    limit on a lent GPU) keeps every row finished before the cut.

    Line 1 of each run is ``{"record": "run", "bench": ..., "env": ..., "args": ...}``, then one
    ``{"record": "row", "bench": ..., **row}`` per row. The file is appended to, so several runs (eager rows, then
    compiled rows in a later step) share one file. ``path=None`` writes nothing.
    """

    def __init__(self, path: str | None, bench: str, header: dict[str, Any]):
        self.path, self.bench = path, bench
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._append({"record": "run", "bench": bench, **header})

    def _append(self, rec: dict[str, Any]) -> None:
        assert self.path is not None
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a SIGKILL right after must not lose the line

    def write(self, row: dict[str, Any]) -> None:
        if self.path:
            self._append({"record": "row", "bench": self.bench, **row})


def read_rows(path: str, bench: str | None = None) -> list[dict[str, Any]]:
    """The ``row`` records of a :class:`RowSink` file (of one benchmark when ``bench`` is given)."""
    out = []
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("record") == "row" and (bench is None or rec.get("bench") == bench):
            out.append(rec)
    return out


COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


def sgemm_peak_flops(device: torch.device, n: int = 2048, iters: int = 5, dtype: torch.dtype = torch.float32,
                     min_seconds: float = 1.5) -> float:
    """The machine's attainable dense matmul rate in FLOP/s, measured: the best of at least ``iters`` ``n x n @ n x n``
    products (``2 n^3`` FLOPs each) and at least ``min_seconds`` of them, after ``min_seconds / 3`` of warm-up, with
    the threads torch uses now. Best, not median: the probe asks what the hardware can reach (a benchmark row is then
    a fraction of it). Why the time floor: on 2 CPU threads the best of 5 products right after start ranged over
    108-158 GFLOP/s in one process (the threads and the clock ramp up); the best over 1.5 s after a warm-up stayed
    within a few percent of the highest."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds / 3:
        torch.mm(a, b)
        sync(device)
    best, count, start = float("inf"), 0, time.perf_counter()
    while count < iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best, count = min(best, time.perf_counter() - t), count + 1
    return 2.0 * n**3 / best


def flop_counter() -> Any:
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts PyTorch's CPU attention kernel.

    torch's registry has formulas for the CUDA SDPA kernels (flash, efficient, cuDNN) but not for
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (and its backward), which SDPA runs on a CPU: uncounted,
    a ViT's attention (~30 % of the tiny encoder's FLOPs at 497 tokens: ``4 B H N^2 d``) would be missing from every
    CPU rate. The same formulas as the CUDA kernels' are mapped onto it."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})


def resolve_peak(choice: str, device: torch.device, datasheet: float | None, what: str) -> tuple[float | None, str]:
    """The peak FLOP/s every row is a fraction of, and a note saying where it came from.

    ``choice``: ``auto`` (a CPU: :func:`sgemm_peak_flops` measured now; a GPU: ``datasheet``, the card's dense peak
    for the dtype, when known), a number of TFLOP/s (assumed, marked so), or ``none``.
    """
    if choice == "none":
        return None, "no peak (--peak-tflops none)"
    if choice != "auto":
        try:
            value = float(choice)
        except ValueError:
            raise SystemExit(f"--peak-tflops takes auto, none or a number, got {choice!r}") from None
        return value * 1e12, f"{value:g} TFLOP/s ASSUMED (--peak-tflops)"
    if device.type == "cuda":
        if datasheet:
            return datasheet, f"{datasheet / 1e12:g} TFLOP/s ({what} datasheet peak)"
        return None, f"peak unknown for {what} (pass --peak-tflops N): no fraction"
    peak = sgemm_peak_flops(device)
    return peak, (f"{peak / 1e9:.1f} GFLOP/s measured now: the best fp32 2048^3 sgemm over 1.5 s on "
                  f"{torch.get_num_threads()} thread(s) (--peak-tflops auto)")


def compile_fn(fn: Callable, backend: str = "inductor") -> Callable:
    """``torch.compile(fn, backend=...)``. ``inductor`` is the real thing (what is timed on a GPU); ``aot_eager``
    traces through Dynamo and AOTAutograd (graph capture, our custom ops' fake kernels, the joint graph) but
    runs eager kernels, so a CPU dry run checks the compiled rows' plumbing without minutes of C++ codegen."""
    if backend not in COMPILE_BACKENDS:
        raise ValueError(f"unknown compile backend {backend!r}; choose from {COMPILE_BACKENDS}")
    return torch.compile(fn, backend=backend)


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """columns: (key, header). Floats are shown with 4 significant digits."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, (_, h) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h), w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))
