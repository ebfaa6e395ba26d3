"""``python -m maskspec_fast.train {pretrain,finetune,eval}``: the training command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..backends import COMPILE_BACKENDS, compile_module, format_backends
from ..config import ModelConfig
from ..frontend.audio import AudioFileError
from ..frontend.logmel import SAMPLE_RATE, LogMel, model_frames
from ..serialization import CheckpointWriteError
from .config import TrainConfig
from .distributed import DistInfo, cleanup, init_distributed
from .logs import append_bad_files, write_bad_files
from .recipe import FinetuneRecipe
from .recipe_flags import add_recipe_flags, recipe_from_flags

EXAMPLES = """examples:
  # pre-train MaskSpec-tiny on the built-in synthetic sounds (CPU-sized decoder), then fine-tune and evaluate
  python -m maskspec_fast.train pretrain --preset tiny --data synthetic:2000 --out runs/pt
  python -m maskspec_fast.train finetune --init runs/pt/final --data synthetic:400:seed=1 \\
      --eval-data synthetic:400:seed=2 --out runs/ft
  python -m maskspec_fast.train eval --checkpoint runs/ft/final --data synthetic:400:seed=2
  # the fine-tuning recipe of the paper (SpecAugment, mixup, patchout, best checkpoint by eval accuracy)
  python -m maskspec_fast.train finetune --init runs/pt/final --data esc50:ESC-50:folds=1,2,3,4 \\
      --eval-data esc50:ESC-50:folds=5 --eval-every 200 --pool mean --head-init zero --no-refit-head \\
      --layer-decay 0.75 --drop-path 0.1 --freq-mask 48 --time-mask 192 --mixup 0.3 --patchout 200 \\
      --label-smoothing 0.1
  # several processes (DDP; NCCL on GPUs, Gloo on CPU): --batch-size is the GLOBAL batch, split over processes
  torchrun --nproc_per_node 8 -m maskspec_fast.train pretrain --data folder:audio --batch-size 512 --out runs/pt
data specs: synthetic:N[:seed=S] | folder:DIR | classes:DIR | esc50:DIR[:folds=1,2,3] | manifest:FILE(.csv|.jsonl)
  | hdf5:FILE[,FILE] | webdataset:'DIR/shard-{000000..000099}.tar' (streamed) | hf:DIR  (prepare shards once
  with: python -m maskspec_fast.data prepare SRC_SPEC OUT_DIR)
exit status: 0 done, 2 bad input (one line naming the file and the problem), 3 a non-finite loss / gradient norm /
  state (the line names the checkpoint to continue from: not one written after the loss diverged; then with
  --resume CHECKPOINT and a lower --lr), 4 a checkpoint could not be written (e.g. disk full)
resume: --resume auto continues from the newest good checkpoint in --out (model, optimizer, lr schedule,
  grad scaler, data position, RNG states; the torch front end resumes mid-epoch exactly, the DALI front end
  re-decodes the used part of the current epoch to reach the same position)
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="training (or evaluation) data spec, see below")
    g.add_argument("--clip-seconds", type=float, default=None,
                   help="clip length in seconds (default: finetune --init: the checkpoint's frames; else 2.56 for "
                        "synthetic:, 5 for esc50:, 10 otherwise); shorter files are zero-padded (the run warns when "
                        "padding exceeds 25 %% of the audio)")
    g.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    g.add_argument("--skip-bad-files", action="store_true",
                   help="replace corrupt/unreadable files by other clips and count them instead of stopping")
    g.add_argument("--frontend", choices=["torch", "dali", "auto"], default="torch",
                   help="training input pipeline: torch (DataLoader + LogMel on the device), dali (NVIDIA DALI "
                        "decodes files and computes the log-mel; file-based data only), auto (dali when it imports "
                        "and the data are files, else torch). Evaluation always uses torch. Default: torch")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="output directory (checkpoints, log.csv, final/)")
    g.add_argument("--batch-size", type=int, default=32,
                   help="GLOBAL batch: clips per optimizer step over all processes and --accum-steps micro-batches "
                        "(each process loads batch/processes; lr scales with it)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast dtype (auto: bf16 on CUDA, fp32 on CPU)")
    path = g.add_mutually_exclusive_group()
    path.add_argument("--fused", dest="fused", action="store_true", default=True,
                      help="the fused fast path (the default; prints which implementation each op runs and why)")
    path.add_argument("--reference", dest="fused", action="store_false",
                      help="the plain PyTorch reference path (the truth the fused path is tested against)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (in place: checkpoints keep plain names, --resume works with or "
                        "without it; the first step's time, compilation included, is printed)")
    g.add_argument("--compile-backend", choices=COMPILE_BACKENDS, default=None,
                   help="torch.compile backend with --compile (default inductor; aot_eager captures the graph "
                        "without generating kernels: a quick check)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def _optim(p: argparse.ArgumentParser, steps: int, blr: float, warmup: int) -> None:
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=steps, help="optimizer steps")
    g.add_argument("--blr", type=float, default=blr, help="base lr; peak lr = blr * global_batch / 256 (MAE rule)")
    g.add_argument("--lr", type=float, default=None, help="absolute peak lr (overrides --blr)")
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--warmup-steps", type=int, default=warmup)
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    g.add_argument("--accum-steps", type=int, default=1,
                   help="micro-batches per step (gradient accumulation: same result, 1/N of the activation memory)")
    g.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    g.add_argument("--keep", type=int, default=3, help="step checkpoints kept (checkpoints/best is kept apart)")
    g.add_argument("--resume", default=None, help="checkpoint directory, or 'auto' for the newest in --out")
    g.add_argument("--log-every", type=int, default=5)
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count) steps whose loss or gradient norm is NaN/Inf instead of stopping; such "
                        "an update is never applied either way")
    g.add_argument("--max-nonfinite-skips", type=int, default=20,
                   help="with --skip-nonfinite: stop after more than N consecutive skipped steps (default 20)")
    g.add_argument("--tensorboard", action="store_true", help="also log scalars to <out>/tensorboard")
    g.add_argument("--picture-every", type=int, default=100,
                   help="pre-training: save reconstruction PNGs to <out>/pictures every N steps (0: never)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m maskspec_fast.train",
        description="MaskSpec pre-training, fine-tuning and evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="masked-spectrogram pre-training", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _optim(p, steps=300, blr=1.5e-4, warmup=30)
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=ModelConfig.presets(), default="tiny")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any ModelConfig field, e.g. --set depth=4 (repeatable)")
    g.add_argument("--mask-ratio", type=float, default=0.75)
    g.add_argument("--masks-per-clip", type=int, default=1,
                   help="independent masks per clip per step (EAT's multi-mask trick; patch embedding shared)")
    g.add_argument("--decoder-dim", type=int, default=None, help="override the preset's decoder width")
    g.add_argument("--decoder-depth", type=int, default=None)
    g.add_argument("--decoder-heads", type=int, default=None)
    g.add_argument("--no-norm-pix", action="store_true", help="plain (unnormalized) patch targets")
    g.add_argument("--no-mel-jitter", action="store_true", help="disable the fmin/fmax jitter augmentation")

    p = sub.add_parser("finetune", help="fine-tune a classifier", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    _optim(p, steps=None, blr=None, warmup=None)
    # Every recipe option defaults to None: the value then comes from maskspec_fast.train.recipe.FinetuneRecipe, the
    # one home of the fine-tuning defaults (shown in brackets), which experiments/ssl_eval.py measures.
    r = FinetuneRecipe()
    p.set_defaults(batch_size=None, min_lr=None, weight_decay=None, clip_grad=None)
    g = p.add_argument_group("recipe (maskspec_fast.train.recipe; --steps / --warmup-steps / --lr / --blr override)")
    # declared once for this command and experiments/ssl_eval.py (recipe_flags.py)
    add_recipe_flags(g, ("epochs", "warmup_epochs", "betas", "val_fraction", "patience", "eval_every_epochs",
                         "head_init", "refit_head", "pool"), recipe=r)
    g = p.add_argument_group("model")
    g.add_argument("--init", default=None, help="a save_pretrained directory (pre-trained Model or Classifier)")
    g.add_argument("--preset", choices=ModelConfig.presets(), default="tiny", help="used without --init")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field when building without --init (repeatable)")
    g.add_argument("--eval-data", default=None, help="evaluated at the end (and every --eval-every steps)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="select on --eval-data instead of a validation split: evaluate every N steps and keep the "
                        "best model (accuracy, or mAP for multi-label sets) in <out>/checkpoints/best")
    add_recipe_flags(g, ("layer_decay", "drop_path", "label_smoothing"), recipe=r)
    g.add_argument("--patchout", type=int, default=None,
                   help=f"patch tokens dropped per clip in training [{r.patchout_fraction:g} of them]")
    g = p.add_argument_group("augmentation and sampling")
    add_recipe_flags(g, ("time_roll", "freq_mask", "time_mask", "gain_db", "tilt_db", "mixup"), recipe=r)
    g.add_argument("--balanced-sampling", action="store_true",
                   help="draw each epoch's clips with replacement, weighted by the fit split's class-balanced "
                        "sample weights (for imbalanced sets such as AudioSet); seeded, so resume is exact")

    p = sub.add_parser("eval", help="evaluate a fine-tuned classifier", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("--checkpoint", required=True, help="a Classifier save_pretrained directory")
    return parser


def parse_overrides(items: list[str]) -> dict:
    """``["depth=4", "norm_pix_loss=false"]`` -> typed ModelConfig overrides."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(ModelConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {sorted(types)}")
        kind = str(types[key])
        if "bool" in kind:
            out[key] = value.lower() in ("1", "true", "yes", "on")
        elif "int" in kind:
            out[key] = int(value)
        elif "float" in kind:
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _device(name: str) -> torch.device:
    """The device ``--device`` names; ValueError (exit 2, one line) for one this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name}: not a device name (auto, cpu, cuda or cuda:N)") from e
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return d


def _dataset(spec: str, args, train: bool):
    from ..data import build_dataset
    from ..data.official import official_options
    from ..data.spec import KINDS, parse_spec

    kw = dict(train=train, seed=args.seed, on_error="skip" if args.skip_bad_files else "raise")
    if args.clip_seconds is not None:
        kw["clip_seconds"] = args.clip_seconds
    # audioset: / vggsound: list their missing downloads in the run's folder (missing.csv)
    kw.update(official_options(KINDS[parse_spec(spec)[0]], getattr(args, "out", None)))
    return build_dataset(spec, **kw)


class Console:
    """Prints on rank 0 only (every rank runs the same code under torchrun) and writes rank 0's JSON files."""

    def __init__(self, info: DistInfo):
        self.info = info

    def say(self, *a, **k) -> None:
        if self.info.is_main:
            print(*a, **k)

    def write_json(self, path: Path, obj: dict) -> None:
        if not self.info.is_main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    from .loop import NonFiniteLoss

    args = build_parser().parse_args(argv)
    from ..data.official import say_missing_in_one_line

    say_missing_in_one_line()  # "warning: audioset: N of M rows ... have no file ..." as one line
    # Subnormal floats (tiny Adam moments, decayed activations) take a slow path on many CPUs; flushing them to
    # zero is cheap insurance (no slowdown from them was measured in our runs, nor any change in results).
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        device = _device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)  # one GPU per process
    if device.type == "cuda":
        torch.cuda.set_device(device)  # kernels launch on the current device: make it the one asked for
    if args.precision == "auto":
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    con = Console(info)
    dist_note = f", processes={info.world_size} ({info.backend})" if info.enabled else ""
    con.say(f"maskspec_fast {args.command}: device={device}, precision={args.precision}, fused={args.fused}{dist_note}")
    if args.fused:
        con.say(format_backends())
    try:
        return _COMMANDS[args.command](args, device, con)
    except AudioFileError as e:
        what = "leave such files out of the score" if args.command == "eval" else "replace such files"
        print(f"error: {e} (use --skip-bad-files to {what})", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except CheckpointWriteError as e:  # e.g. a full disk: the message names the folder; older checkpoints kept
        print(f"error: {e.strerror or e}", file=sys.stderr)
        return 4
    finally:
        cleanup()


def _predict_kw(args, con: Console, batch_size: int | None = None) -> dict:
    return dict(batch_size=batch_size or args.batch_size, workers=args.workers, precision=args.precision,
                quiet=args.quiet, dist_info=con.info)


_DECODER_OPTIONS = (("decoder_embed_dim", "decoder_dim"), ("decoder_depth", "decoder_depth"),
                    ("decoder_num_heads", "decoder_heads"))


def _pretrain(args, device, con: Console) -> int:
    from ..model import Model
    from .loop import train
    from .tasks import PretrainTask

    ds = _dataset(args.data, args, train=True)
    frames = model_frames(round(ds.clip_seconds * SAMPLE_RATE))
    over = {"frames": frames, "mask_ratio": args.mask_ratio, "norm_pix_loss": not args.no_norm_pix}
    over.update({field: getattr(args, opt) for field, opt in _DECODER_OPTIONS if getattr(args, opt) is not None})
    config = ModelConfig.from_preset(args.preset, **{**parse_overrides(args.set), **over})
    model = Model(config, fused=args.fused).to(device)
    run = TrainConfig.from_args(args).replace(out=args.out or "runs/pretrain")
    con.say(f"data: {args.data} ({len(ds)} clips of {ds.clip_seconds} s -> {frames} frames); model: {args.preset} "
            f"{config.num_patches} patches, {sum(p.numel() for p in model.parameters())/1e6:.1f}M params")
    jitter = (0.0, 0.0) if args.no_mel_jitter else (9.0, 1000.0)
    frontend = LogMel(fmin_jitter=jitter[0], fmax_jitter=jitter[1])
    settings = {"command": "pretrain", "argv": sys.argv[1:], "data": args.data, "masks_per_clip": args.masks_per_clip,
                "mel_jitter_hz": list(jitter)}
    result = train(PretrainTask(model, args.masks_per_clip), ds, run, frontend.to(device), device, log=con.say,
                   dist_info=con.info, settings=settings)
    first, last = _mean(result["losses"][:10]), _mean(result["losses"][-10:])
    con.say(f"pre-training done: {result['steps']} steps in {result['seconds']:.0f} s; "
            f"loss {first:.4f} (first 10) -> {last:.4f} (last 10); saved {result['final']}")
    con.write_json(Path(run.out) / "summary.json", {k: v for k, v in result.items() if k != "losses"} |
                   {"loss_first10": first, "loss_last10": last})
    return 0


# FinetuneRecipe field <- CLI option (None: not given, the recipe's default stands)
_RECIPE_OPTIONS = ("epochs", "warmup_epochs", "batch_size", "min_lr", "weight_decay", "betas", "clip_grad",
                   "val_fraction", "patience", "eval_every_epochs", "head_init", "refit_head", "pool", "layer_decay",
                   "drop_path", "label_smoothing", "time_roll", "freq_mask", "time_mask", "gain_db", "tilt_db", "mixup")


def recipe_from_args(args: argparse.Namespace) -> FinetuneRecipe:
    """The recipe with the options the command line gave (others keep the recipe's defaults)."""
    return recipe_from_flags(args, {k: k for k in _RECIPE_OPTIONS})


def _clip_from_checkpoint(args, con: Console, source):
    """``finetune --init``: the clip length is the checkpoint's (its ``config.frames``), not the data set's default.
    When the data's default clips give other frames, the data are built again with ``frames * hop / rate``
    seconds (the shortest clips that give those frames; a default that gives the same frames, e.g. 10 s for a
    992-frame model, is kept). An explicit ``--clip-seconds`` wins; when it gives other frames, one line says so
    (the positional table is then cropped or interpolated to the new grid). Returns the source to train on."""
    from ..frontend.constants import HOP_LENGTH
    from ..hub import resolve_pretrained
    from ..serialization import CONFIG_NAME, config_from_meta

    cfg_file = resolve_pretrained(args.init) / CONFIG_NAME
    ck_frames = config_from_meta(cfg_file, _checkpoint_meta(args.init)).frames
    frames = model_frames(round(source.clip_seconds * SAMPLE_RATE))
    if frames == ck_frames:
        return source
    if args.clip_seconds is None:
        args.clip_seconds = ck_frames * HOP_LENGTH / SAMPLE_RATE
        return _dataset(args.data, args, train=True)
    con.say(f"note: --clip-seconds {args.clip_seconds:g} gives {frames} frames, {args.init} was trained on "
            f"{ck_frames} ({ck_frames * HOP_LENGTH / SAMPLE_RATE:g} s): its positional table is "
            f"{'cropped' if frames < ck_frames else 'interpolated'} to the new length")
    return source


def _finetune(args, device, con: Console) -> int:
    """Fine-tune by :func:`maskspec_fast.train.finetune.finetune` with the recipe plus the options given."""
    from ..data.spec import require_labels
    from ..model import Classifier
    from .evaluation import describe, evaluate
    from .finetune import finetune

    source = _dataset(args.data, args, train=True)
    if args.init:
        source = _clip_from_checkpoint(args, con, source)
    require_labels(source, args.data)
    recipe = recipe_from_args(args)
    frames = model_frames(round(source.clip_seconds * SAMPLE_RATE))
    if args.init:
        clf = Classifier.from_pretrained(args.init, num_classes=source.num_classes, fused=args.fused,
                                         drop_path_rate=recipe.drop_path, frames=frames, pool=recipe.pool)
        con.say(f"initialized the encoder from {args.init}")
    else:
        config = ModelConfig.from_preset(args.preset, **{**parse_overrides(args.set), "frames": frames,
                                                          "drop_path_rate": recipe.drop_path, "pool": recipe.pool})
        clf = Classifier(config, source.num_classes, fused=args.fused)
        con.say("encoder randomly initialized (no --init)")
    run = TrainConfig.from_args(args).replace(out=args.out or "runs/finetune", batch_size=recipe.batch_size)
    eval_source = _dataset(args.eval_data, args, train=False) if args.eval_data else None
    result = finetune(clf, source, recipe, run, device=device, steps=args.steps, warmup_steps=args.warmup_steps,
                      lr=args.lr, blr=args.blr, patchout=args.patchout, eval_source=eval_source,
                      eval_every=args.eval_every, log=con.say, dist_info=con.info,
                      extra_settings={"command": "finetune", "argv": sys.argv[1:], "data": args.data,
                                      "eval_data": args.eval_data, "init": args.init})
    con.say(f"fine-tuning done: {result.steps} steps; saved {result.final}")
    if result.best:
        b = result.best
        con.say(f"best {b['metric']} = {b['value']:.4f} at step {b['step']} (checkpoints/best)")
    summary = dict(result.summary)
    if eval_source is not None:
        summary["eval"] = evaluate(result.model, eval_source, device, **_predict_kw(args, con, recipe.batch_size))
        con.say(describe(summary["eval"], args.eval_data))
        if summary["eval"]["bad_files"] and con.info.is_main:  # beside training's rows, marked as left out
            append_bad_files(Path(run.out) / "bad_files.csv", result.steps,
                             [(p, f"{why} (left out of evaluation)") for p, why in summary["eval"]["bad_files"]])
    con.write_json(Path(run.out) / "summary.json", summary)
    return 0


def _eval(args, device, con: Console) -> int:
    from ..model import Classifier
    from .evaluation import describe, evaluate

    if _checkpoint_meta(args.checkpoint).get("model_type") == "pretrain":
        raise ValueError(f"{args.checkpoint}: a pre-training checkpoint (no classifier head): fine-tune it first, "
                         f"e.g. python -m maskspec_fast.train finetune --init {args.checkpoint} --data ...")
    clf = Classifier.from_pretrained(args.checkpoint, fused=args.fused).to(device)
    ds = _dataset(args.data, args, train=False)
    if ds.num_classes != clf.num_classes:
        raise ValueError(f"{args.data}: {ds.num_classes} classes, the classifier has {clf.num_classes}")
    if args.compile:
        compile_module(clf, args.compile_backend or "inductor")
    metrics = evaluate(clf, ds, device, **_predict_kw(args, con))
    con.say(describe(metrics, args.data))
    if args.out:
        con.write_json(Path(args.out) / "config.json", {"command": "eval", "argv": sys.argv[1:], "data": args.data,
                                                        "checkpoint": args.checkpoint, "batch_size": args.batch_size,
                                                        "precision": args.precision})
        con.write_json(Path(args.out) / "eval.json", metrics)
        if metrics.get("bad_files") and con.info.is_main:
            write_bad_files(Path(args.out) / "bad_files.csv", metrics["bad_files"])
    if metrics.get("omitted"):
        con.say(f"warning: {metrics['omitted']} bad file(s) left out of the score"
                + (f" (listed in {Path(args.out) / 'bad_files.csv'})" if args.out else
                   ": " + "; ".join(f"{p}: {why}" for p, why in metrics["bad_files"][:5])))
    return 0


def _checkpoint_meta(checkpoint: str) -> dict:
    """``config.json`` of a save_pretrained directory or hub id, checked (a malformed one names the file)."""
    from ..hub import resolve_pretrained
    from ..serialization import CONFIG_NAME, read_meta

    return read_meta(resolve_pretrained(checkpoint) / CONFIG_NAME)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


_COMMANDS = {"pretrain": _pretrain, "finetune": _finetune, "eval": _eval}

if __name__ == "__main__":
    raise SystemExit(main())
