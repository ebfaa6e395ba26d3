"""CPU inference speed: seconds of audio embedded per second (and per core), waveform in, clip embeddings out.

    python benchmarks/inference.py                       # tiny and base, every backend, 10-s clips + 10 minutes
    python benchmarks/inference.py --presets tiny --backends eager,onnx --threads 1
    python benchmarks/inference.py --quick               # seconds: a 2-block model, short audio (what CI runs)

Backends (``--backends``, comma list or ``all``), each timed on the same audio from the waveform:

* ``eager``: ``Classifier.embed(LogMel(wave))`` (the fused path, the CLI default; FFT front end);
* ``compile``: the same function under ``torch.compile`` (``--compile-backend``, inductor by default);
* ``export``: the waveform-in ``torch.export`` program (front end inside, as a DFT convolution;
  ``maskspec_fast.export``);
* ``onnx``: that graph in ONNX Runtime, fp32 (``intra_op_num_threads`` = ``--threads``);
* ``onnx_int8``: the same graph after ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, MatMul and
  Gemm); kept only if every clip embedding stays within ``--int8-min-cos`` cosine similarity of fp32 eager
  (the row says ``rejected`` otherwise);
* ``timm``: timm's ``VisionTransformer`` of the same size (patch 16, mean pooling, 1 input channel) on the same
  log-mel: the peer a user would reach for. Needs timm (``.venv-timm``); the row says ``skipped`` without it.

Cases: ``clips``, a batch of ``--batch-size`` clips of ``--clip-seconds`` (capped at the model's positional
table, 10.07 s for the presets); ``long``, one ``--long-minutes`` recording cut into consecutive windows of the
clip length (the last aligned to the end), embedded ``--batch-size`` windows at a time and averaged. For each row:
median [p20, p80] wall time after ``--num-warm-iter`` untimed runs, audio seconds per second, the same per core
(``/ --threads``), ``min cos`` of its embeddings against eager on the same audio, and for ``long`` the process's
peak resident memory during the row (Linux ``VmHWM``, reset before the row: includes the model and runtime
already resident), and the row's rate against the machine's peak: ``GFLOP/s`` = the FLOPs of the eager computation
of the same audio (``torch.utils.flop_counter``: the encoder's matmuls, its attention -- CPU SDPA mapped onto torch's
SDPA formula, :func:`_common.flop_counter` -- and the mel projection; the FFT is not counted), the same useful work for every backend, over the row's time, and ``%peak`` = that over the peak
(``--peak-tflops auto``: the best of two sgemm probes, at the start of the run and after its rows, :func:`_common.sgemm_peak_flops`). Models are randomly initialised (speed and memory do not depend on the weights; the int8
cosine of a trained model can differ: check it on yours).

Prints a table and writes ``--results-file`` (JSON: device, versions, commit, arguments, rows).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import (  # noqa: E402
    environment,
    flop_counter,
    peak_rss,
    print_table,
    reset_peak_rss,
    resolve_peak,
    sgemm_peak_flops,
    time_fn,
    write_json,
)

from maskspec_fast import Classifier, ModelConfig  # noqa: E402
from maskspec_fast.export import export_onnx, export_program, waveform_limits  # noqa: E402
from maskspec_fast.frontend import SAMPLE_RATE, LogMel  # noqa: E402

BACKENDS = ["eager", "compile", "export", "onnx", "onnx_int8", "timm"]
CPU = torch.device("cpu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="tiny,base", help="comma list of ModelConfig presets (default tiny,base)")
    p.add_argument("--backends", default="all", help=f"comma list of {BACKENDS} or 'all'")
    p.add_argument("--cases", default="clips,long", help="clips, long or both (default)")
    p.add_argument("--batch-size", type=int, default=8, help="clips (or windows) per call (default 8)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="clip length, capped at the table (default 10)")
    p.add_argument("--long-minutes", type=float, default=10.0, help="the long recording (default 10 minutes)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and ORT threads (default all)")
    p.add_argument("--num-warm-iter", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--num-bench-iter", type=int, default=7, help="timed runs of the clips case (default 7)")
    p.add_argument("--long-iters", type=int, default=2, help="timed runs of the long case, after one warm-up (default 2)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--peak-tflops", default="auto",
                   help="the peak rows are a fraction of: auto (an sgemm probe measured now), none, or TFLOP/s")
    p.add_argument("--int8-min-cos", type=float, default=0.99, help="int8 kept if every cos >= this (default 0.99)")
    p.add_argument("--results-file", default="benchmarks/results/cpu_inference.json", help="JSON output ('' for none)")
    p.add_argument("--quick", action="store_true",
                   help="a test run in seconds: tiny with 2 blocks and a 256-frame table, 20 s 'long' audio, "
                        "1 warm-up + 2 timed runs, torch.compile on the aot_eager backend")
    a = p.parse_args(argv)
    if a.quick:
        a.presets, a.long_minutes, a.num_warm_iter, a.num_bench_iter, a.long_iters = "tiny", 1 / 3, 1, 2, 1
        a.compile_backend, a.batch_size = "aot_eager", min(a.batch_size, 4)
    a.backends = BACKENDS if a.backends == "all" else [b.strip() for b in a.backends.split(",")]
    bad = sorted(set(a.backends) - set(BACKENDS))
    if bad:
        p.error(f"unknown backend(s) {bad}; choose from {BACKENDS}")
    a.cases = [c.strip() for c in a.cases.split(",")]
    return a


def build(preset: str, quick: bool) -> Classifier:
    torch.manual_seed(0)
    extra = dict(depth=2, frames=256) if quick else {}
    return Classifier(ModelConfig.from_preset(preset, **extra), num_classes=527, fused=True).eval()


def build_timm(clf: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """timm's VisionTransformer of ``clf``'s size on ``clf``'s log-mel input (``ImportError`` without timm)."""
    from timm.models.vision_transformer import VisionTransformer

    c = clf.config
    vit = VisionTransformer(img_size=(c.n_mels, c.frames), patch_size=c.patch_size, in_chans=1, num_classes=0,
                            embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
                            global_pool="avg").eval()
    front = LogMel().eval()
    def run(w: torch.Tensor) -> torch.Tensor:
        spec = front(w)  # (B, M, T): whole patches, at most the table, as our model crops
        return vit(spec[..., : min(c.frames, spec.shape[-1] // c.patch_size * c.patch_size)].unsqueeze(1))

    return run


def runner(backend: str, clf: Classifier, workdir: Path, args: argparse.Namespace) -> Callable[[torch.Tensor], Any]:
    """``wave (B, N) -> embeddings (B, D)`` for one backend (raises ImportError when its package is missing)."""
    front = LogMel().eval()
    eager = lambda w: clf.embed(front(w))  # noqa: E731
    if backend == "eager":
        return eager
    if backend == "compile":
        return torch.compile(eager, backend=args.compile_backend)
    if backend == "export":
        return export_program(clf, "embedding", "waveform").module()
    if backend == "timm":
        return build_timm(clf)
    import onnxruntime as ort

    path = workdir / f"{clf.config.preset}.onnx"
    if not path.exists():
        export_onnx(clf, path, "embedding", input="waveform")
    if backend == "onnx_int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = workdir / f"{clf.config.preset}_int8.onnx"
        if not q.exists():
            quantize_dynamic(str(path), str(q), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        path = q
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda w: torch.from_numpy(sess.run(None, {"wave": w.numpy()})[0])


def window_starts(n: int, size: int) -> list[int]:
    """Consecutive windows of ``size`` covering ``n`` samples, the last aligned to the end."""
    starts = list(range(0, max(n - size, 0) + 1, size))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


def embed_long(run: Callable, wave: torch.Tensor, size: int, batch: int) -> torch.Tensor:
    """``wave (N,)`` -> the mean of its windows' embeddings ``(D,)``, ``batch`` windows per call."""
    starts = window_starts(wave.shape[0], size)
    embs = [run(torch.stack([wave[s : s + size] for s in starts[i : i + batch]])) for i in range(0, len(starts), batch)]
    return torch.cat(embs).mean(0)


def cos_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().reshape(len(a), -1), b.float().reshape(len(b), -1)).min())


def measure(preset: str, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    clf = build(preset, args.quick)
    lo, hi = waveform_limits(clf.config)
    clip = int(min(args.clip_seconds * SAMPLE_RATE, hi))
    gen = torch.Generator().manual_seed(1)
    clips = torch.randn(args.batch_size, clip, generator=gen) * 0.1
    long = torch.randn(int(args.long_minutes * 60 * SAMPLE_RATE), generator=gen) * 0.1
    rows: list[dict[str, Any]] = []
    ref: dict[str, torch.Tensor] = {}
    flops = count_flops(runner("eager", clf, workdir, args), clips, long, clip, args)
    for backend in args.backends:
        try:
            with torch.no_grad():
                run = runner(backend, clf, workdir, args)
        except ImportError as e:
            rows += [dict(preset=preset, backend=backend, case=c, status=f"skipped: {e}") for c in args.cases]
            continue
        for case in args.cases:
            row: dict[str, Any] = dict(preset=preset, backend=backend, case=case, batch=args.batch_size)
            if case == "clips":
                fn = lambda run=run: run(clips)  # noqa: E731
                audio_s, warm, iters = clips.numel() / SAMPLE_RATE, args.num_warm_iter, args.num_bench_iter
            else:
                fn = lambda run=run: embed_long(run, long, clip, args.batch_size)  # noqa: E731
                audio_s, warm, iters = long.numel() / SAMPLE_RATE, 1, args.long_iters
            reset_peak_rss()
            with torch.no_grad():
                out = fn()
                t = time_fn(fn, CPU, max(warm - 1, 0), iters)
            out = out.reshape(1, -1) if case == "long" else out
            ref.setdefault(case, out)
            per_s = audio_s / t["median_s"]
            row.update(audio_s=audio_s, median_ms=1e3 * t["median_s"], p20_ms=1e3 * t["p20_s"], p80_ms=1e3 * t["p80_s"],
                       x_realtime=per_s, x_realtime_per_core=per_s / args.threads,
                       min_cos_vs_eager=cos_min(out, ref[case]) if backend != "timm" else None, status="ok",
                       GFLOP_per_s=flops[case] / t["median_s"] / 1e9)
            if case == "long":
                row["peak_rss_mib"] = peak_rss() / 2**20
            if backend == "onnx_int8" and row["min_cos_vs_eager"] < args.int8_min_cos:
                row["status"] = f"rejected: cos {row['min_cos_vs_eager']:.4f} < {args.int8_min_cos}"
            rows.append(row)
            at_peak = f", {row['GFLOP_per_s'] * 1e9 / args.peak:.0%} of the first probe" if args.peak else ""
            print(f"  {preset} {backend} {case}: {per_s / args.threads:.1f}x real time per core{at_peak}", flush=True)
    return rows


def count_flops(eager: Callable[[torch.Tensor], Any], clips: torch.Tensor, long: torch.Tensor, clip: int,
                args: argparse.Namespace) -> dict[str, float]:
    """FLOPs of the eager computation of each case's audio (:func:`_common.flop_counter`; module doc)."""
    out = {}
    for case in args.cases:
        with torch.no_grad(), flop_counter() as counter:
            eager(clips) if case == "clips" else embed_long(eager, long, clip, args.batch_size)
        out[case] = float(counter.get_total_flops())
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    args.peak, args.peak_note = resolve_peak(str(args.peak_tflops), CPU, None, "CPU")
    print(f"peak: {args.peak_note}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            rows += measure(preset.strip(), args, Path(tmp))
    if args.peak and args.peak_tflops == "auto":
        # a second probe after the rows: the attainable rate is the best either probe saw (on a shared VM a probe
        # can land in a slow spell; a row above its peak would then read > 100 %)
        again = sgemm_peak_flops(CPU)
        args.peak_note += f"; best of this and a probe after the rows ({again / 1e9:.1f})"
        args.peak = max(args.peak, again)
    for row in rows:
        if args.peak and row.get("status") == "ok":
            row["frac_peak"] = row["GFLOP_per_s"] * 1e9 / args.peak
    print_table(rows, [("preset", "preset"), ("backend", "backend"), ("case", "case"), ("audio_s", "audio s"),
                       ("median_ms", "median ms"), ("p20_ms", "p20"), ("p80_ms", "p80"), ("x_realtime", "x RT"),
                       ("x_realtime_per_core", "x RT/core"), ("peak_rss_mib", "peak MiB"),
                       ("GFLOP_per_s", "GFLOP/s"), ("frac_peak", "%peak"), ("min_cos_vs_eager", "min cos"),
                       ("status", "status")])
    print(f"%peak: GFLOP/s of the eager computation's FLOPs over the peak: {args.peak_note}")
    env = environment(CPU)
    for mod in ("onnxruntime", "onnx", "timm"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = "not installed"
    write_json(args.results_file, {"bench": "inference", "env": env, "args": vars(args), "rows": rows})
    return rows


if __name__ == "__main__":
    rows = run(parse_args())
    sys.exit(1 if any(r["status"].startswith("error") for r in rows) else 0)
