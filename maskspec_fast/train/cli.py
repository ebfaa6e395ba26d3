"""``python -m maskspec_fast.train {pretrain,finetune,eval}``: the training command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..backends import format_backends
from ..config import POOLS, ModelConfig
from ..frontend.audio import AudioFileError
from ..frontend.logmel import SAMPLE_RATE, LogMel, num_frames
from .config import TrainConfig
from .distributed import DistInfo, cleanup, init_distributed
from .recipe import FinetuneRecipe

EXAMPLES = """examples:
  # pre-train MaskSpec-tiny on the built-in synthetic sounds (CPU-sized decoder), then fine-tune and evaluate
  python -m maskspec_fast.train pretrain --preset tiny --data synthetic:2000 --out runs/pt
  python -m maskspec_fast.train finetune --init runs/pt/final --data synthetic:400:seed=1 \\
      --eval-data synthetic:400:seed=2 --out runs/ft
  python -m maskspec_fast.train eval --checkpoint runs/ft/final --data synthetic:400:seed=2
  # the fine-tuning recipe of the paper (SpecAugment, mixup, patchout, best checkpoint by eval accuracy)
  python -m maskspec_fast.train finetune --init runs/pt/final --data esc50:ESC-50:folds=1,2,3,4 \\
      --eval-data esc50:ESC-50:folds=5 --eval-every 200 --freq-mask 48 --time-mask 192 --mixup 0.3 --patchout 40
  # several processes (DDP; NCCL on GPUs, Gloo on CPU): --batch-size is the GLOBAL batch, split over processes
  torchrun --nproc_per_node 8 -m maskspec_fast.train pretrain --data folder:audio --batch-size 512 --out runs/pt
data specs: synthetic:N[:seed=S] | folder:DIR | classes:DIR | esc50:DIR[:folds=1,2,3] | manifest:FILE(.csv|.jsonl)
  | hdf5:FILE[,FILE] | webdataset:'DIR/shard-{000000..000099}.tar' (streamed) | hf:DIR  (issue 15; prepare shards
  once with: python -m maskspec_fast.data prepare SRC_SPEC OUT_DIR)
resume: --resume auto continues from the newest complete checkpoint in --out (model, optimizer, lr schedule,
  grad scaler, data position, RNG states; the torch front end resumes mid-epoch exactly, the DALI front end
  re-decodes the used part of the current epoch to reach the same position)
"""


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, help="training (or evaluation) data spec, see below")
    g.add_argument("--clip-seconds", type=float, default=None,
                   help="clip length in seconds (default: 2.56 for synthetic data, 10 otherwise)")
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
    g.add_argument("--skip-nonfinite", action="store_true", help="skip steps whose loss is NaN/Inf (counted)")
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
    # The defaults come from maskspec_fast.train.recipe (the recipe benchmarks/ssl_eval.py measures): length in
    # epochs of the fit split, lr for the recipe's batch scaled linearly, a validation split of --data picking the
    # best checkpoint with early stopping.
    r = FinetuneRecipe()
    p.set_defaults(min_lr=r.min_lr)
    g = p.add_argument_group("recipe (maskspec_fast.train.recipe; --steps / --warmup-steps / --lr / --blr override)")
    g.add_argument("--epochs", type=float, default=r.epochs, help="epochs of the fit split (used without --steps)")
    g.add_argument("--warmup-epochs", type=float, default=r.warmup_epochs, help="used without --warmup-steps")
    g.add_argument("--val-fraction", type=float, default=r.val_fraction,
                   help="share of --data held out (stratified) to pick the best checkpoint and stop early; the "
                        "final model is that checkpoint (0: no split, the last step's model; ignored when "
                        "--eval-data with --eval-every asks to select on the evaluation data)")
    g.add_argument("--patience", type=int, default=r.patience,
                   help="validation evaluations without improvement before stopping (0: never stop early)")
    g.add_argument("--eval-every-epochs", type=float, default=r.eval_every_epochs)
    g.add_argument("--head-init", choices=["zero", "probe"], default=r.head_init,
                   help="head: MAE's near-zero init, or the logistic regression on frozen fit-split embeddings (LP-FT)")
    g.add_argument("--refit-head", action=argparse.BooleanOptionalAction, default=r.refit_head,
                   help="after checkpoint selection on the validation split, refit the head as a logistic regression "
                        "on the selected encoder's embeddings of all training clips (fit + validation)")
    g.add_argument("--pool", choices=list(POOLS), default=r.pool,
                   help="classifier pooling (ModelConfig.pool): mean over all patch tokens (timm-compatible); freq: the "
                        "mean per frequency row, rows concatenated (patchout then drops whole time columns); "
                        "freq_stats: freq plus each row's std over time")
    g = p.add_argument_group("model")
    g.add_argument("--init", default=None, help="a save_pretrained directory (pre-trained Model or Classifier)")
    g.add_argument("--preset", choices=ModelConfig.presets(), default="tiny", help="used without --init")
    g.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a ModelConfig field when building without --init (repeatable)")
    g.add_argument("--eval-data", default=None, help="evaluated at the end (and every --eval-every steps)")
    g.add_argument("--eval-every", type=int, default=0,
                   help="with --val-fraction 0: evaluate on --eval-data every N steps and keep the best model "
                        "(accuracy, or mAP for multi-label sets) in <out>/checkpoints/best with <out>/best.json")
    g.add_argument("--layer-decay", type=float, default=r.layer_decay)
    g.add_argument("--drop-path", type=float, default=r.drop_path)
    g.add_argument("--label-smoothing", type=float, default=r.label_smoothing)
    g.add_argument("--patchout", type=int, default=None,
                   help=f"patch tokens dropped per clip in training (default: {r.patchout_fraction:g} of them)")
    g = p.add_argument_group("augmentation and sampling")
    g.add_argument("--time-roll", action=argparse.BooleanOptionalAction, default=r.time_roll,
                   help="random circular time shift per clip")
    g.add_argument("--freq-mask", type=int, default=r.freq_mask, help="SpecAugment: one frequency band of up to N "
                   "mel bins masked per clip (paper: 48; 0: off)")
    g.add_argument("--time-mask", type=int, default=r.time_mask, help="SpecAugment: one time span of up to N frames "
                   "per 10 s masked per clip, scaled to the clip length (paper: 192; 0: off)")
    g.add_argument("--gain-db", type=float, default=r.gain_db, metavar="DB",
                   help="random level change per clip, uniform in +-DB (exact in the power domain; 0: off)")
    g.add_argument("--tilt-db", type=float, default=r.tilt_db, metavar="DB",
                   help="random spectral tilt per clip: uniform in +-DB from the lowest to the highest mel bin "
                        "(0: off)")
    g.add_argument("--mixup", type=float, default=r.mixup, metavar="ALPHA",
                   help="mixup with lam = max(u, 1-u), u ~ Beta(ALPHA, ALPHA) per clip, soft targets (PaSST: 0.3; "
                        "0: off). Clips are paired within each process's micro-batch")
    g.add_argument("--balanced-sampling", action="store_true",
                   help="draw each epoch's clips with replacement, weighted by dataset.sample_weights() "
                        "(class-balanced, for imbalanced sets such as AudioSet); seeded, so resume is exact")

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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return d


def _dataset(spec: str, args, train: bool):
    from ..data import build_dataset

    kw = dict(train=train, seed=args.seed, on_error="skip" if args.skip_bad_files else "raise")
    if args.clip_seconds is not None:
        kw["clip_seconds"] = args.clip_seconds
    return build_dataset(spec, **kw)


def _frames_for(dataset) -> int:
    return num_frames(int(round(dataset.clip_seconds * SAMPLE_RATE)))


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
    # Subnormal floats (tiny Adam moments, decayed activations) take a slow path on many CPUs; flushing them to
    # zero is cheap insurance (no slowdown from them was measured in our runs, nor any change in results).
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = _device(args.device)
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
        print(f"error: {e} (use --skip-bad-files to replace such files)", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    finally:
        cleanup()


def _predict_kw(args, con: Console, quiet: bool | None = None) -> dict:
    return dict(batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                quiet=args.quiet if quiet is None else quiet, dist_info=con.info)


def _pretrain(args, device, con: Console) -> int:
    from ..model import Model
    from .loop import train
    from .tasks import PretrainTask

    ds = _dataset(args.data, args, train=True)
    frames = _frames_for(ds)
    over = {"frames": frames // 16 * 16, "mask_ratio": args.mask_ratio, "norm_pix_loss": not args.no_norm_pix}
    for k, a in (("decoder_embed_dim", "decoder_dim"), ("decoder_depth", "decoder_depth"),
                 ("decoder_num_heads", "decoder_heads")):
        if getattr(args, a) is not None:
            over[k] = getattr(args, a)
    config = ModelConfig.from_preset(args.preset, **{**parse_overrides(args.set), **over})
    model = Model(config, fused=args.fused).to(device)
    args.out = args.out or "runs/pretrain"
    con.say(f"data: {args.data} ({len(ds)} clips of {ds.clip_seconds} s -> {frames} frames); model: {args.preset} "
            f"{config.num_patches} patches, {sum(p.numel() for p in model.parameters())/1e6:.1f}M params")
    frontend = LogMel(fmin_jitter=0 if args.no_mel_jitter else 9, fmax_jitter=0 if args.no_mel_jitter else 1000)
    result = train(PretrainTask(model, args.masks_per_clip), ds, TrainConfig.from_args(args), frontend.to(device),
                   device, log=con.say, dist_info=con.info)
    first, last = _mean(result["losses"][:10]), _mean(result["losses"][-10:])
    con.say(f"pre-training done: {result['steps']} steps in {result['seconds']:.0f} s; "
            f"loss {first:.4f} (first 10) -> {last:.4f} (last 10); saved {result['final']}")
    con.write_json(Path(args.out) / "summary.json", {k: v for k, v in result.items() if k != "losses"} |
                   {"loss_first10": first, "loss_last10": last})
    return 0


def _finetune(args, device, con: Console) -> int:
    """Fine-tune with the small-set recipe (:mod:`maskspec_fast.train.recipe`) unless options override it."""
    from ..data.spec import require_labels
    from ..model import Classifier
    from . import recipe as recipes
    from .evaluation import describe, evaluate, make_evaluator
    from .loop import train
    from .tasks import FinetuneTask

    full = _dataset(args.data, args, train=True)
    require_labels(full, args.data)
    rec = FinetuneRecipe().replace(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                                   val_fraction=args.val_fraction, patience=args.patience,
                                   eval_every_epochs=args.eval_every_epochs)
    if args.eval_every and not args.eval_data:
        raise ValueError("--eval-every needs --eval-data")
    if args.eval_data and args.eval_every:  # explicit: select on --eval-data every N steps (no split, no stop)
        rec = rec.replace(val_fraction=0.0)
        args.val_fraction = 0.0
    ds, val_ds = recipes.train_val_split(full, rec, args.seed)
    sched = recipes.resolve(rec, len(full), getattr(full, "num_classes", None))
    if args.steps is None:
        args.steps = sched.steps
    if args.warmup_steps is None:
        args.warmup_steps = min(sched.warmup_steps, max(0, args.steps - 1))
    if args.lr is None and args.blr is None:  # the recipe's lr at its batch, scaled linearly to this batch
        args.lr = rec.lr * args.batch_size / rec.batch_size
    frames = _frames_for(ds)
    if args.init:
        clf = Classifier.from_pretrained(args.init, num_classes=ds.num_classes, fused=args.fused,
                                         drop_path_rate=args.drop_path, frames=frames // 16 * 16, pool=args.pool)
        con.say(f"initialized the encoder from {args.init}")
    else:
        config = ModelConfig.from_preset(args.preset, **{**parse_overrides(args.set), "frames": frames // 16 * 16,
                                                          "drop_path_rate": args.drop_path, "pool": args.pool})
        clf = Classifier(config, ds.num_classes, fused=args.fused)
        con.say("encoder randomly initialized (no --init)")
    if args.patchout is None:
        args.patchout = recipes.patchout_tokens(rec, clf.config.num_patches)
    clf.patchout = args.patchout
    clf.to(device)
    args.out = args.out or "runs/finetune"
    con.say(f"data: {args.data} ({len(full)} clips, {ds.num_classes} classes, multilabel={ds.multilabel}); "
            f"fit {len(ds)}, validation {len(val_ds) if val_ds is not None else 0} (val-fraction "
            f"{args.val_fraction}); {args.steps} steps (warm-up {args.warmup_steps}), peak lr "
            f"{args.lr if args.lr is not None else args.blr}, patchout {args.patchout}")
    if args.head_init == "probe" and not ds.multilabel:
        _probe_head(clf, ds, args, device, con)
    task = FinetuneTask(clf, ds.multilabel, args.label_smoothing, args.layer_decay, freq_mask=args.freq_mask,
                        time_mask=args.time_mask, mixup_alpha=args.mixup, time_roll=args.time_roll,
                        gain_db=args.gain_db, tilt_db=args.tilt_db)
    periodic = None
    if val_ds is not None:  # checkpoint selection and early stopping on the validation split, never --eval-data
        args.eval_every, args.eval_at_start = sched.eval_every, True
        periodic = make_evaluator(val_ds, device, **_predict_kw(args, con, quiet=True))
    elif args.eval_data and args.eval_every:  # select on --eval-data (built once, reused at every evaluation)
        args.patience = 0
        periodic = make_evaluator(_dataset(args.eval_data, args, train=False), device,
                                  **_predict_kw(args, con, quiet=True))
    result = train(task, ds, TrainConfig.from_args(args), LogMel().to(device), device, log=con.say,
                   dist_info=con.info, evaluate=periodic)
    con.say(f"fine-tuning done: {result['steps']} steps in {result['seconds']:.0f} s; saved {result['final']}")
    if result.get("best"):
        b = result["best"]
        best_dir = Path(args.out) / "checkpoints" / "best"
        con.say(f"best {b['metric']} = {b['value']:.4f} at step {b['step']} (saved in {best_dir})")
        if val_ds is not None:  # the recipe's model is the selected checkpoint
            from safetensors.torch import load_file

            clf.load_state_dict(load_file(str(best_dir / "model.safetensors"), device=str(device)), strict=True)
            how = f"the best validation checkpoint (step {b['step']})"
            if args.refit_head and not full.multilabel:
                _probe_head(clf, full, args, device, con, what="refitted on all")
                how += ", its head refitted on all training clips"
            if con.info.is_main:
                clf.save_pretrained(result["final"])
            con.say(f"final model = {how}, saved {result['final']}")
    summary = {k: v for k, v in result.items() if k != "losses"}
    if args.eval_data:
        summary["eval"] = evaluate(clf, _dataset(args.eval_data, args, train=False), device, **_predict_kw(args, con))
        con.say(describe(summary["eval"], args.eval_data))
    con.write_json(Path(args.out) / "summary.json", summary)
    return 0


@torch.no_grad()
def _probe_head(clf, ds, args, device, con: Console, what: str = "initialized from a linear probe on") -> None:
    """Set the head to the recipe's logistic regression on frozen embeddings of ``ds``: LP-FT's start (the fit
    split) or, with ``--refit-head``, the selected model's head refitted on all training clips."""
    from . import recipe as recipes
    from .evaluation import predict

    head = clf.head
    clf.head = torch.nn.Identity()  # predict() then returns the clip embeddings
    try:
        emb, labels = predict(clf, ds, LogMel().to(device), device, **_predict_kw(args, con))
    finally:
        clf.head = head
    w, b, mu, sd = recipes.fit_logistic_regression(emb.double().cpu(), labels.cpu(), clf.num_classes)
    recipes.set_head_from_probe(clf.head, w.to(device), b.to(device), mu.to(device), sd.to(device))
    con.say(f"head {what} {len(ds)} clips")


def _eval(args, device, con: Console) -> int:
    from ..model import Classifier
    from .evaluation import describe, evaluate

    clf = Classifier.from_pretrained(args.checkpoint, fused=args.fused).to(device)
    ds = _dataset(args.data, args, train=False)
    if ds.num_classes != clf.num_classes:
        raise ValueError(f"{args.data}: {ds.num_classes} classes, the classifier has {clf.num_classes}")
    metrics = evaluate(clf, ds, device, **_predict_kw(args, con))
    con.say(describe(metrics, args.data))
    if args.out:
        con.write_json(Path(args.out) / "eval.json", metrics)
    return 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


_COMMANDS = {"pretrain": _pretrain, "finetune": _finetune, "eval": _eval}

if __name__ == "__main__":
    raise SystemExit(main())
