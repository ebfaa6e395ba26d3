"""benchmarks/inference.py --quick: every backend's row is measured, and the exported / compiled / ONNX paths give
the eager embeddings (cosine >= 1 - 1e-5 on the same audio); int8 is kept or rejected by its stated cosine."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "benchmarks" / "inference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_inference_quick_runs_every_backend_and_holds_them_to_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    bench = _bench()
    out = tmp_path / "inference.json"
    args = bench.parse_args(["--quick", "--results-file", str(out)])
    saved_threads = args.threads
    rows = bench.run(args)
    by = {(r["backend"], r["case"]): r for r in rows}
    assert set(by) == {(b, c) for b in bench.BACKENDS for c in ("clips", "long")}
    for (backend, case), r in by.items():
        if backend == "timm" and r["status"].startswith("skipped"):
            continue  # timm lives in .venv-timm (tests/test_bench_timm_peer.py)
        assert r["status"] == "ok" or (backend == "onnx_int8" and r["status"].startswith("rejected")), r
        assert r["x_realtime"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["x_realtime_per_core"] == pytest.approx(r["x_realtime"] / saved_threads)
        if case == "long":
            assert r["peak_rss_mib"] > 0
        if backend in ("compile", "export", "onnx"):
            assert r["min_cos_vs_eager"] >= 1 - 1e-5, r
    saved = json.loads(out.read_text())
    assert {"commit", "torch", "onnxruntime", "device"} <= set(saved["env"]) and len(saved["rows"]) == len(rows)


def test_inference_help_and_bad_backend(capsys):
    bench = _bench()
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--help"])
    assert e.value.code == 0 and "audio" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.parse_args(["--backends", "eager,tpu"])


def test_long_windows_cover_the_recording():
    bench = _bench()
    assert bench.window_starts(10, 4) == [0, 4, 6] and bench.window_starts(8, 4) == [0, 4]
    assert bench.window_starts(3, 4) == [0]


def test_flop_count_includes_cpu_attention():
    """SDPA on a CPU runs ``_scaled_dot_product_flash_attention_for_cpu``, which torch's FlopCounterMode does not
    count; the benchmarks' counter does (``4 B H N^2 d`` forward, the formula torch uses for the CUDA kernels), so a
    model's FLOPs are its Linear layers plus its attention."""
    import torch

    _bench()  # puts benchmarks/ on sys.path
    from _common import flop_counter

    b, h, n, d = 2, 3, 37, 16
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    with flop_counter() as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert counter.get_total_flops() == 4 * b * h * n * n * d
    with flop_counter() as counter:
        out.sum().backward()
    assert counter.get_total_flops() > 0  # the backward is counted too
    with flop_counter() as counter:  # the explicit form counts the same matmul FLOPs
        torch.matmul(torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1), v)
    assert counter.get_total_flops() == 4 * b * h * n * n * d
