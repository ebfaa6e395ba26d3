"""Whole training steps (forward, backward, AdamW) of MaskSpec pre-training and fine-tuning: our reference, our
fused path and the timm peer, eager and torch.compile, measured side by side in one run, at one or more inputs.

    python benchmarks/throughput.py          # CPU default: tiny, batch 8, 128x256 (128 patches) and 128x992 (496)
    python benchmarks/throughput.py --preset base --batch-size 64 --frames 992 --dtype bf16 \\
        --impls ref,fused,timm --rows-file out/throughput.jsonl          # on a GPU

Implementations (``--impls``, comma list or ``all``):

* ``ref``: :class:`maskspec_fast.Model` with ``fused=False`` (MAE's procedure, explicit-softmax attention);
* ``fused``: ``fused=True`` (Triton gathers / loss, fused patchify, flash-attn or SDPA), loss only;
* ``timm``: the peer a user would pick instead of us, the MAE recipe on ``timm``'s ViT ``Block`` (its fused
  SDPA attention) with the same masking and loss (:func:`build_timm_model`); on a GPU this, not ``ref``, is
  the bar the fused path must clear. Needs timm (import-guarded: the row says "skipped" without it);
* ``<impl>_compile``: the same model under ``torch.compile`` (``--compile-backend``, inductor by default); our
  models through :func:`maskspec_fast.backends.compile_module`, the one the CLI's ``--compile`` calls (in place),
  the timm peer through ``torch.compile``. ``compile s`` is the first step's time minus a timed step's.

Reports samples/s, seconds of audio per second, step time median [p20, p80], peak memory, model FLOP/s, and
the compute floor: the step's matmul FLOPs over the card's dense peak for the dtype (``floor ms``), with the
step's distance to it (``MFU = floor / step``: the fraction of the peak the step reaches). The peak
(``--peak-tflops auto``, the default): on a CPU an sgemm probe measured in the same run (the machine's attainable
rate, :func:`_common.sgemm_peak_flops`), on a GPU the card's datasheet peak; a number is marked as assumed. FLOPs are counted for the matmuls (x3 for
forward + backward), the same count for every implementation (the reference's work):
  encoder on 1 + K visible tokens: per block 24 N D^2 + 4 N^2 D   (qkv 6ND^2, proj 2ND^2, mlp 16ND^2, QK^T and AV)
  decoder on 1 + L tokens with width Dd: the same formula; plus patch embedding 2 L 256 D, decoder_embed
  2 (1+K) D Dd and the prediction head 2 (1+L) Dd 256 (all L in the reference).

``--rows-file`` appends each row as JSON lines the moment it is measured (a time limit keeps finished rows);
``--results-file`` writes the whole table as JSON at the end.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import (  # noqa: E402
    COMPILE_BACKENDS,
    RowSink,
    compile_fn,
    environment,
    peak_rss,
    print_table,
    reset_peak_rss,
    resolve_peak,
    sync,
    time_fn,
    write_json,
)

from maskspec_fast import Classifier, Model, ModelConfig  # noqa: E402
from maskspec_fast.backends import compile_module  # noqa: E402
from maskspec_fast.layers import init_weights  # noqa: E402
from maskspec_fast.ops import num_visible  # noqa: E402
from maskspec_fast.train.schedule import make_adamw  # noqa: E402

# Dense peak FLOP/s per card (vendor datasheets, SXM parts unless named; no sparsity). bf16 and tf32 are tensor-core
# peaks; fp32 is the non-tensor-core rate (what fp32 matmuls get with TF32 off, PyTorch's default for matmul).
# Most specific names first (matched by substring of torch.cuda.get_device_name).
PEAK_FLOPS = {
    "H100 PCIe": {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "H100": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "H200": {"bf16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}
IMPLS = ["ref", "fused", "timm", "ref_compile", "fused_compile", "timm_compile"]


def block_flops(n: int, d: int) -> float:
    return 24 * n * d * d + 4 * n * n * d


def pretrain_flops(c: ModelConfig, batch: int, mask_ratio: float, masks: int = 1) -> float:
    """Training FLOPs of one pre-training step (forward x3)."""
    L = c.num_patches
    k = num_visible(L, mask_ratio)
    fwd = 2 * L * c.patch_dim * c.embed_dim
    fwd += masks * (c.depth * block_flops(1 + k, c.embed_dim) + 2 * (1 + k) * c.embed_dim * c.decoder_embed_dim
                    + c.decoder_depth * block_flops(1 + L, c.decoder_embed_dim) + 2 * (1 + L) * c.decoder_embed_dim * c.patch_dim)
    return 3 * batch * fwd


def finetune_flops(c: ModelConfig, batch: int, num_classes: int) -> float:
    L = c.num_patches
    fwd = 2 * L * c.patch_dim * c.embed_dim + c.depth * block_flops(1 + L, c.embed_dim) + 2 * c.embed_dim * num_classes
    return 3 * batch * fwd


def peak_for(device_name: str, dtype: str) -> float | None:
    """The card's dense peak FLOP/s for the step's matmul dtype, None when the card is not in PEAK_FLOPS."""
    if dtype == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"
    for key, table in PEAK_FLOPS.items():
        if key in device_name:
            return table[dtype]
    return None


def _timm_blocks(depth: int, dim: int, heads: int, mlp_ratio: float, eps: float, drop_path: list[float]) -> nn.ModuleList:
    from timm.models.vision_transformer import Block  # optional: only the timm rows need it

    blocks = nn.ModuleList(
        Block(dim, heads, mlp_ratio=mlp_ratio, qkv_bias=True, drop_path=dp, norm_layer=partial(nn.LayerNorm, eps=eps))
        for dp in drop_path
    )
    blocks.apply(init_weights)  # MAE's init, as our blocks get
    return blocks


def build_timm_model(kind: str, config: ModelConfig, num_classes: int = 527) -> nn.Module:
    """MaskSpec with timm's ViT ``Block`` (timm's own fused SDPA attention) in the encoder and the decoder.

    Everything else is our reference model, i.e. MAE's procedure: the patch embedding, sin-cos positions, the
    per-sample argsort masking, the decoder's mask tokens and un-shuffle, the norm-pix masked MSE. timm's Block
    has the same parameter names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), so
    state dicts move between this model and ours with ``strict=True`` and the same weights give the same loss.
    kind: ``"pretrain"`` (:class:`Model`) or ``"finetune"`` (:class:`Classifier`).
    """
    c = config
    if kind == "pretrain":
        model = Model(c, fused=False)
        model.decoder_blocks = _timm_blocks(c.decoder_depth, c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio,
                                            c.norm_eps, [0.0] * c.decoder_depth)
    else:
        model = Classifier(c, num_classes, fused=False)
    dpr = torch.linspace(0, c.drop_path_rate, c.depth).tolist()  # the stochastic-depth ramp our encoder uses
    model.blocks = _timm_blocks(c.depth, c.embed_dim, c.num_heads, c.mlp_ratio, c.norm_eps, dpr)
    return model


def make_step(kind: str, impl: str, config: ModelConfig, args, device: torch.device):
    base = impl.removesuffix("_compile")
    torch.manual_seed(0)
    if base == "timm":
        model = build_timm_model(kind, config, args.num_classes).to(device)
    elif kind == "pretrain":
        model = Model(config, fused=base == "fused").to(device)
    else:
        model = Classifier(config, args.num_classes, fused=base == "fused").to(device)
    opt = make_adamw(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # fused AdamW, as the training CLI uses
    fwd = model
    if impl.endswith("_compile"):  # ours: in place, as `--compile` does in the CLI; the peer: torch.compile
        fwd = compile_fn(model, args.compile_backend) if base == "timm" else compile_module(model, args.compile_backend)
    spec = torch.randn(args.batch_size, config.n_mels, config.frames, device=device)
    labels = torch.randint(args.num_classes, (args.batch_size,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    extra = {"masks_per_clip": args.masks_per_clip} if (kind == "pretrain" and args.masks_per_clip > 1) else {}
    if kind == "pretrain" and base == "fused":
        extra["return_pred"] = False  # a training step needs only the loss: head on masked tokens only

    def step():
        with amp:
            if kind == "pretrain":
                loss = fwd(spec, mask_ratio=args.mask_ratio, **extra)[0]
            else:
                loss = torch.nn.functional.cross_entropy(fwd(spec).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def _failure_status(e: Exception) -> str:
    """Row status for a step that raised: ``skipped`` when an optional package is missing (the timm rows without
    timm), ``error`` otherwise (a broken path, out of memory): errors make the script exit 1 after all rows."""
    if isinstance(e, ImportError) and "timm" in str(e):
        return "skipped: timm not installed (pip install timm)"
    return f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def run(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # everything that uses the current device (compile, cuBLAS handles) follows
    impls = IMPLS if args.impls == "all" else args.impls.split(",")
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        raise SystemExit(f"unknown --impls {unknown}; choose from {IMPLS} or 'all'")
    env = environment(device)
    mm_dtype = "bf16" if args.dtype == "bf16" else "fp32"
    sheet = peak_for(env["device"], mm_dtype) if device.type == "cuda" else None
    peak, peak_note = resolve_peak(str(args.peak_tflops), device, sheet, f"{env['device']} dense {mm_dtype}")
    sink = RowSink(args.rows_file, "throughput", {"env": env, "args": vars(args), "peak_flops": peak,
                                                   "peak_note": peak_note})
    rows = []
    shapes = []
    for frames in (int(f) for f in str(args.frames).split(",")):
        over = {"frames": frames}
        if args.depth:
            over["depth"] = args.depth
        if args.decoder_dim:
            over["decoder_embed_dim"] = args.decoder_dim
        if args.decoder_depth:
            over["decoder_depth"] = args.decoder_depth
        config = ModelConfig.from_preset(args.preset, **over)
        shape = f"{config.n_mels}x{config.frames}"
        shapes.append((shape, config.num_patches))
        clip_s = (config.frames * 320) / 32000  # seconds of audio per clip at the model's input length
        for kind in args.modes.split(","):
            flops = (pretrain_flops(config, args.batch_size, args.mask_ratio, args.masks_per_clip) if kind == "pretrain"
                     else finetune_flops(config, args.batch_size, args.num_classes))
            for impl in impls:
                label = f"{shape}/{kind}/{impl}"
                base_row = {"shape": shape, "patches": config.num_patches, "mode": kind, "impl": impl}
                try:
                    step, model = make_step(kind, impl, config, args, device)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    base_rss = reset_peak_rss()
                    t_first = time.perf_counter()
                    step()  # the first call: compiles a *_compile row
                    sync(device)
                    first_s = time.perf_counter() - t_first
                    t = time_fn(step, device, max(0, args.num_warm_iter - 1), args.num_bench_iter)
                    mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss() - base_rss)
                except Exception as e:  # a path that cannot run here is reported, not hidden
                    row = {**base_row, "status": _failure_status(e)}
                    print(f"{label}: {row['status']}", flush=True)
                    rows.append(row)
                    sink.write(row)
                    continue
                sps = args.batch_size / t["median_s"]
                row = {**base_row, "status": "ok", "step_ms": 1e3 * t["median_s"],
                       "p20_ms": 1e3 * t["p20_s"], "p80_ms": 1e3 * t["p80_s"], "samples_per_s": sps,
                       "audio_s_per_s": sps * clip_s, "peak_mem_MiB": mem / 2**20, "GFLOP_per_step": flops / 1e9,
                       "TFLOP_per_s": flops / t["median_s"] / 1e12,
                       "floor_ms": 1e3 * flops / peak if peak else None,
                       "MFU": flops / t["median_s"] / peak if peak else None,
                       "compile_s": first_s - t["median_s"] if impl.endswith("_compile") else None}
                rows.append(row)
                sink.write(row)
                floor = f", floor {row['floor_ms']:.1f} ms (MFU {row['MFU']:.0%})" if peak else ""
                print(f"{label}: {row['step_ms']:.1f} ms/step [{row['p20_ms']:.1f}, {row['p80_ms']:.1f}]{floor}",
                      flush=True)
                del model, step
    for shape, _ in shapes:  # speed-ups against the reference / the timm peer of the same shape and mode, same run
        for kind in args.modes.split(","):
            same = [r for r in rows if r["shape"] == shape and r["mode"] == kind and r["status"] == "ok"]
            for bar in ("ref", "timm"):
                ref = next((r for r in same if r["impl"] == bar), None)
                for r in same:
                    if ref:
                        r[f"vs_{bar}"] = ref["step_ms"] / r["step_ms"]
    print(f"\n{env['device']}, torch {env['torch']}, triton {env['triton']}, commit {env['commit']}; preset {args.preset}, "
          f"batch {args.batch_size}, dtype {args.dtype}, mask ratio {args.mask_ratio}, masks/clip {args.masks_per_clip}")
    print(f"compute floor = matmul FLOPs / peak; peak: {peak_note}")
    cols = [("shape", "input"), ("patches", "L"), ("mode", "mode"), ("impl", "impl"), ("step_ms", "step ms"),
            ("p20_ms", "p20"), ("p80_ms", "p80"), ("samples_per_s", "samples/s"), ("audio_s_per_s", "audio s/s"),
            ("peak_mem_MiB", "peak MiB"), ("TFLOP_per_s", "TFLOP/s"), ("floor_ms", "floor ms"), ("MFU", "MFU"),
            ("vs_ref", "x ref"), ("vs_timm", "x timm"), ("compile_s", "compile s"), ("status", "status")]
    print_table(rows, cols)
    for shape, n in shapes:  # the headline ratio, per input shape
        for kind in args.modes.split(","):
            r = next((r for r in rows if (r["shape"], r["mode"], r["impl"]) == (shape, kind, "fused")
                      and "vs_ref" in r), None)
            if r:
                print(f"{shape} ({n} patches) {kind}: fused vs reference {r['vs_ref']:.2f}x"
                      + (f", vs timm {r['vs_timm']:.2f}x" if "vs_timm" in r else ""))
    write_json(args.results_file, {"env": env, "args": vars(args), "peak_note": peak_note, "rows": rows})
    return rows


def parse_args(argv=None):
    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=ModelConfig.presets(), default="base" if on_gpu else "tiny")
    p.add_argument("--batch-size", type=int, default=128 if on_gpu else 8)
    p.add_argument("--frames", default="992" if on_gpu else "256,992",
                   help="comma list of input frames (992 = the 10 s pre-training crop, 496 patches; 256 = 128 patches"
                        " is small enough that fixed costs dominate)")
    p.add_argument("--depth", type=int, default=None, help="override the preset's encoder depth")
    p.add_argument("--decoder-dim", type=int, default=None, help="override the preset's decoder width")
    p.add_argument("--decoder-depth", type=int, default=None)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16" if on_gpu else "fp32", help="autocast dtype")
    p.add_argument("--modes", default="pretrain,finetune", help="comma list of pretrain,finetune")
    p.add_argument("--impls", default="all" if on_gpu else "ref,fused", help=f"comma list of {IMPLS} or 'all'")
    p.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default="inductor",
                   help="backend of the *_compile rows (aot_eager: a CPU plumbing check without codegen)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--masks-per-clip", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=527)
    p.add_argument("--num-warm-iter", type=int, default=3 if on_gpu else 2)
    p.add_argument("--num-bench-iter", type=int, default=20 if on_gpu else 6)
    p.add_argument("--peak-tflops", default="auto",
                   help="the peak each row is a fraction of: auto (CPU: an sgemm probe measured in this run; GPU: the "
                        "card's datasheet peak), none, or a number of TFLOP/s (marked assumed)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows-file", default=None, help="append each row to this JSON-lines file as it finishes")
    p.add_argument("--results-file", default="benchmarks/results/throughput.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


if __name__ == "__main__":
    raise SystemExit(1 if any(r["status"].startswith("error") for r in run(parse_args())) else 0)
