"""Fused patchify vs the PyTorch reference, at the MaskSpec shapes: only what the model's two paths run.

Rows, per (shape, dtype, threads):

* ``patches``: ``patchify_ref(x)`` (permute + copy) vs ``patchify_fused(x)`` (C++ on CPU, Triton on CUDA);
* ``tokens+patches``: the model's input stage. Reference path: the Conv2d patch embedding on the image plus
  ``patchify_ref`` for the loss targets; fused path: ``patchify_fused`` once, then a Linear on those patches
  (``patch_tokens``), the same patches serving as targets. Embedding width ``--embed-dim`` (tiny: 192).

Timing: ``--num-warm-iter`` untimed calls, then ``--num-bench-iter`` timed ones (synchronized on CUDA); median
and p20/p80. Throughput counts the bytes a single pass must move (read the spectrogram, write the outputs).
Peak extra memory is measured per call in a child process whose glibc malloc serves every large block with a
fresh mmap (``MALLOC_MMAP_THRESHOLD_``), so the peak-RSS rise (``VmHWM`` after ``clear_refs``) is the memory
the call held at its peak, intermediates included (CPU only; on CUDA ``max_memory_allocated`` is used).

    python benchmarks/patchify.py                       # B=32, 128x992 and 128x1000, fp32 + bf16, 1 and all threads
    python benchmarks/patchify.py --threads 2 --dtypes fp32 --results-file runs/bench/patchify.json
    python benchmarks/patchify.py --device cuda --rows-file out/patchify.jsonl   # Triton kernels; rows as they finish
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RowSink, environment, peak_rss, print_table, reset_peak_rss, time_fn, write_json  # noqa: E402

from maskspec_fast.layers import PatchEmbed  # noqa: E402
from maskspec_fast.ops.patchify import patch_tokens_ref, patchify_ref  # noqa: E402
from maskspec_fast.ops.patchify_fused import patch_tokens, patchify_fused, status  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cases(x: torch.Tensor, patch: int, embed: PatchEmbed) -> dict[str, tuple[Callable, Callable, int]]:
    """name -> (reference, fused, bytes one pass must move)."""
    b, f, t = x.shape
    n, pp = (f // patch) * (t // patch), patch * patch
    esz = x.element_size()
    src = b * (f // patch * patch) * (t // patch * patch) * esz  # the part of the spectrogram that is read
    img = x.unsqueeze(1)  # (B, 1, F, T)
    d = embed.proj.out_channels

    def ref_tokens():
        return patch_tokens_ref(img, None, embed), patchify_ref(x, patch)  # Conv2d tokens + target patches

    def fused_tokens():
        p = patchify_fused(x, patch)  # read once
        return patch_tokens(img, p, embed), p

    return {
        "patches": (lambda: patchify_ref(x, patch), lambda: patchify_fused(x, patch), src + b * n * pp * esz),
        "tokens+patches": (ref_tokens, fused_tokens, src + b * n * (pp + d) * esz),
    }


def make_inputs(b: int, f: int, t: int, dtype: torch.dtype, patch: int, device: torch.device,
                embed_dim: int) -> tuple[torch.Tensor, PatchEmbed]:
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(b, f, t, generator=g) * 3 - 5).to(device=device, dtype=dtype)
    embed = PatchEmbed(patch, embed_dim).to(device=device, dtype=dtype)
    return x, embed


def memory_worker(spec: dict[str, Any]) -> None:
    """Child process: print {case: {"ref": bytes, "fused": bytes}} of peak extra memory per call."""
    torch.set_num_threads(spec["threads"])
    x, embed = make_inputs(spec["b"], spec["f"], spec["t"], DTYPES[spec["dtype"]], spec["patch"], torch.device("cpu"),
                           spec["embed_dim"])
    out = {}
    for name, (ref, fused, _) in cases(x, spec["patch"], embed).items():
        out[name] = {}
        for label, fn in (("ref", ref), ("fused", fused)):
            fn()  # first call: lazy init (op registration, thread pools) is not the op's memory
            base = reset_peak_rss()
            r = fn()
            out[name][label] = peak_rss() - base
            del r
    print(json.dumps(out))


def measure_memory(spec: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}
    r = subprocess.run([sys.executable, __file__, "--_memory-worker", json.dumps(spec)], capture_output=True,
                       text=True, env=env, timeout=600)
    if r.returncode != 0:
        print(f"memory measurement failed: {r.stderr[-500:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def cuda_peak(fn: Callable, device: torch.device) -> int:
    fn()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    r = fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del r
    return peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--shapes", default="128x992,128x1000", help="comma-separated FxT (pre-training, fine-tuning)")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--dtypes", default="fp32,bf16", help=f"comma-separated, from {sorted(DTYPES)}")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
    ap.add_argument("--embed-dim", type=int, default=192, help="patch-embedding width of the tokens row (tiny: 192)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-warm-iter", type=int, default=5)
    ap.add_argument("--num-bench-iter", type=int, default=30)
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--results-file", default="runs/bench/patchify.json")
    ap.add_argument("--rows-file", default=None, help="append each row to this JSON-lines file as it finishes")
    ap.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_worker:
        return memory_worker(json.loads(args.memory_worker))

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    all_threads = torch.get_num_threads()
    threads = [int(s) for s in args.threads.split(",")] if args.threads else sorted({1, all_threads})
    if device.type == "cuda":
        threads = [all_threads]
    print(status())
    sink = RowSink(args.rows_file, "patchify", {"env": environment(device), "status": status(), "args": vars(args)})
    rows = []
    for shape in args.shapes.split(","):
        f, t = (int(v) for v in shape.lower().split("x"))
        for dname in args.dtypes.split(","):
            x, embed = make_inputs(args.batch, f, t, DTYPES[dname], args.patch, device, args.embed_dim)
            for nt in threads:
                torch.set_num_threads(nt)
                mem = None
                if not args.no_memory and device.type == "cpu":
                    mem = measure_memory(dict(b=args.batch, f=f, t=t, dtype=dname, patch=args.patch, threads=nt,
                                              embed_dim=args.embed_dim))
                for name, (ref, fused, nbytes) in cases(x, args.patch, embed).items():
                    tr = time_fn(ref, device, args.num_warm_iter, args.num_bench_iter)
                    tf = time_fn(fused, device, args.num_warm_iter, args.num_bench_iter)
                    row = {
                        "op": name, "shape": f"{args.batch}x{f}x{t}", "dtype": dname, "threads": nt,
                        "ref_ms": tr["median_s"] * 1e3, "ref_p20_ms": tr["p20_s"] * 1e3, "ref_p80_ms": tr["p80_s"] * 1e3,
                        "fused_ms": tf["median_s"] * 1e3, "fused_p20_ms": tf["p20_s"] * 1e3,
                        "fused_p80_ms": tf["p80_s"] * 1e3,
                        "speedup": tr["median_s"] / tf["median_s"],
                        "fused_GBps": nbytes / tf["median_s"] / 1e9, "ref_GBps": nbytes / tr["median_s"] / 1e9,
                    }
                    if mem is not None:
                        row["ref_peak_MiB"] = mem[name]["ref"] / 2**20
                        row["fused_peak_MiB"] = mem[name]["fused"] / 2**20
                    elif device.type == "cuda":
                        row["ref_peak_MiB"] = cuda_peak(ref, device) / 2**20
                        row["fused_peak_MiB"] = cuda_peak(fused, device) / 2**20
                    rows.append(row)
                    sink.write(row)
                    print(f"{name} {row['shape']} {dname} {nt} thr: ref {row['ref_ms']:.3f} ms, fused "
                          f"{row['fused_ms']:.3f} ms ({row['speedup']:.2f}x)", flush=True)
    torch.set_num_threads(all_threads)
    print()
    print_table(rows, [
        ("op", "op"), ("shape", "B x F x T"), ("dtype", "dtype"), ("threads", "thr"),
        ("ref_ms", "ref ms"), ("ref_p20_ms", "p20"), ("ref_p80_ms", "p80"),
        ("fused_ms", "fused ms"), ("fused_p20_ms", "p20"), ("fused_p80_ms", "p80"),
        ("speedup", "speedup"), ("fused_GBps", "fused GB/s"),
        ("ref_peak_MiB", "ref peak MiB"), ("fused_peak_MiB", "fused peak MiB"),
    ])
    write_json(args.results_file, {"env": environment(device), "status": status(), "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
