"""Whole training steps (forward, backward, AdamW) of MaskSpec pre-training and fine-tuning, reference vs fused,
eager vs torch.compile, measured side by side in one run.

    python benchmarks/throughput.py                      # CPU default: tiny, small batch, ~1-2 minutes
    python benchmarks/throughput.py --preset base --batch-size 128 --dtype bf16 --impls all   # on a GPU

Reports samples/s, seconds of audio per second, step time median [p20, p80], peak memory, and on a GPU the model
FLOP/s and MFU. FLOPs are counted for the matmuls (x3 for forward + backward):
  encoder on 1 + K visible tokens: per block 24 N D^2 + 4 N^2 D   (qkv 6ND^2, proj 2ND^2, mlp 16ND^2, QK^T and AV)
  decoder on 1 + L tokens with width Dd: the same formula; plus patch embedding 2 L 256 D, decoder_embed
  2 (1+K) D Dd and the prediction head 2 (1+L) Dd 256 (all L in the reference).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import environment, peak_rss, print_table, reset_peak_rss, time_fn, write_json  # noqa: E402

from maskspec_fast import Classifier, Model, ModelConfig  # noqa: E402
from maskspec_fast.ops import num_visible  # noqa: E402
from maskspec_fast.train.schedule import make_adamw  # noqa: E402

# Dense bf16 / tf32 peak FLOP/s per card (datasheets, SXM parts; no sparsity).
PEAK_FLOPS = {"H100": {"bf16": 989e12, "fp32": 494e12}, "H200": {"bf16": 989e12, "fp32": 494e12},
              "A100": {"bf16": 312e12, "fp32": 156e12}}
IMPLS = ["ref", "ref_compile", "fused", "fused_compile"]


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
    for key, table in PEAK_FLOPS.items():
        if key in device_name:
            return table[dtype]
    return None


def make_step(kind: str, impl: str, config: ModelConfig, args, device: torch.device):
    fused = impl.startswith("fused")
    torch.manual_seed(0)
    if kind == "pretrain":
        model = Model(config, fused=fused).to(device)
    else:
        model = Classifier(config, args.num_classes, fused=fused).to(device)
    opt = make_adamw(model.parameters(), lr=1e-4, betas=(0.9, 0.95))  # fused AdamW, as the training CLI uses
    fwd = torch.compile(model) if impl.endswith("compile") else model
    spec = torch.randn(args.batch_size, config.n_mels, config.frames, device=device)
    labels = torch.randint(args.num_classes, (args.batch_size,), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    extra = {"masks_per_clip": args.masks_per_clip} if (kind == "pretrain" and args.masks_per_clip > 1) else {}
    if kind == "pretrain" and fused:
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


def run(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    over = {"frames": args.frames}
    if args.decoder_dim:
        over["decoder_embed_dim"] = args.decoder_dim
    if args.decoder_depth:
        over["decoder_depth"] = args.decoder_depth
    config = ModelConfig.from_preset(args.preset, **over)
    impls = IMPLS if args.impls == "all" else args.impls.split(",")
    env = environment(device)
    clip_s = (config.frames * 320) / 32000  # seconds of audio per clip at the model's input length
    rows = []
    for kind in args.modes.split(","):
        for impl in impls:
            label = f"{kind}/{impl}"
            try:
                step, model = make_step(kind, impl, config, args, device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                base_rss = reset_peak_rss()
                t = time_fn(step, device, args.num_warm_iter, args.num_bench_iter)
                mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss() - base_rss)
            except Exception as e:  # a path that cannot run here is reported, not hidden
                print(f"{label}: skipped ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
                rows.append({"mode": kind, "impl": impl, "status": f"skipped: {type(e).__name__}"})
                continue
            flops = (pretrain_flops(config, args.batch_size, args.mask_ratio, args.masks_per_clip) if kind == "pretrain"
                     else finetune_flops(config, args.batch_size, args.num_classes))
            sps = args.batch_size / t["median_s"]
            row = {"mode": kind, "impl": impl, "status": "ok", "step_ms": 1e3 * t["median_s"],
                   "p20_ms": 1e3 * t["p20_s"], "p80_ms": 1e3 * t["p80_s"], "samples_per_s": sps,
                   "audio_s_per_s": sps * clip_s, "peak_mem_MiB": mem / 2**20, "TFLOP_per_s": flops / t["median_s"] / 1e12}
            peak = peak_for(env["device"], "bf16" if args.dtype == "bf16" else "fp32") if device.type == "cuda" else None
            row["MFU"] = (flops / t["median_s"] / peak) if peak else None
            rows.append(row)
            print(f"{label}: {row['step_ms']:.1f} ms/step [{row['p20_ms']:.1f}, {row['p80_ms']:.1f}]", flush=True)
            del model, step
    for kind in args.modes.split(","):  # speed-ups against the reference eager step of the same mode, same run
        ref = next((r for r in rows if r["mode"] == kind and r["impl"] == "ref" and r["status"] == "ok"), None)
        for r in rows:
            if r["mode"] == kind and r["status"] == "ok" and ref:
                r["vs_ref"] = ref["step_ms"] / r["step_ms"]
    print(f"\n{env['device']}, torch {env['torch']}, triton {env['triton']}, commit {env['commit']}; preset {args.preset}, "
          f"batch {args.batch_size}, {config.n_mels}x{config.frames} ({config.num_patches} patches), dtype {args.dtype}, "
          f"mask ratio {args.mask_ratio}, masks/clip {args.masks_per_clip}")
    cols = [("mode", "mode"), ("impl", "impl"), ("step_ms", "step ms"), ("p20_ms", "p20"), ("p80_ms", "p80"),
            ("samples_per_s", "samples/s"), ("audio_s_per_s", "audio s/s"), ("peak_mem_MiB", "peak MiB"),
            ("TFLOP_per_s", "TFLOP/s"), ("MFU", "MFU"), ("vs_ref", "x ref"), ("status", "status")]
    print_table(rows, cols)
    write_json(args.results_file, {"env": env, "args": vars(args), "config": config.to_dict(), "rows": rows})
    return rows


def parse_args(argv=None):
    on_gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=ModelConfig.presets(), default="base" if on_gpu else "tiny")
    p.add_argument("--batch-size", type=int, default=128 if on_gpu else 8)
    p.add_argument("--frames", type=int, default=992 if on_gpu else 256, help="input frames (992 = 10 s pre-training crop)")
    p.add_argument("--decoder-dim", type=int, default=None, help="override the preset's decoder width")
    p.add_argument("--decoder-depth", type=int, default=None)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16" if on_gpu else "fp32", help="autocast dtype")
    p.add_argument("--modes", default="pretrain,finetune", help="comma list of pretrain,finetune")
    p.add_argument("--impls", default="all" if on_gpu else "ref,fused", help=f"comma list of {IMPLS} or 'all'")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--masks-per-clip", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=527)
    p.add_argument("--num-warm-iter", type=int, default=3 if on_gpu else 2)
    p.add_argument("--num-bench-iter", type=int, default=20 if on_gpu else 6)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--results-file", default="benchmarks/results/throughput.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


if __name__ == "__main__":
    run(parse_args())
