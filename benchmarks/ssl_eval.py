"""Does MaskSpec pre-training help? A rerunnable end-to-end experiment on CPU.

1. Pre-train a small MaskSpec model (masked-patch reconstruction) on unlabeled audio: a folder (``--unlabeled``) or
   the built-in procedural sounds (``SyntheticSounds``, a large pool drawn with its own seed).
2. On a labeled set in the ESC-50 layout (``--esc50``; default: a small built-in one written with
   ``SyntheticSounds.write_folder(..., layout="esc50")`` from another seed) run k-fold cross-validation of
     finetune_pretrained  fine-tune the whole classifier, encoder from the pre-trained Model (layer-wise lr decay)
     finetune_random      the same recipe from a randomly initialized encoder (no layer decay: nothing to keep)
     probe_pretrained     logistic regression (L-BFGS, L2) on frozen pre-trained clip embeddings
     probe_random         the same on the frozen random encoder the random fine-tuning starts from
3. Print accuracy mean +- std over folds, write JSON (settings, per-fold accuracies, timings, versions, commit),
   a box plot and reconstruction pictures of held-out clips.

    python benchmarks/ssl_eval.py                       # the default experiment (~30 min on 2 CPU cores)
    python benchmarks/ssl_eval.py --quick --out /tmp/q  # smoke run (well under a minute)
    python benchmarks/ssl_eval.py --esc50 /data/ESC-50 --unlabeled /data/unlabeled --clip-seconds 5

Every log-mel is computed once up front (fixed mel bank, no jitter): the model cost dominates and all settings
see identical inputs. Accuracy is the fraction of correctly classified clips of the held-out fold.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import environment, write_json  # noqa: E402

from maskspec_fast import Classifier, Model, ModelConfig  # noqa: E402
from maskspec_fast.frontend.logmel import SAMPLE_RATE, LogMel, num_frames  # noqa: E402
from maskspec_fast.train.schedule import make_adamw, param_groups, set_lr, warmup_cosine  # noqa: E402

SETTINGS = ("finetune_pretrained", "finetune_random", "probe_pretrained", "probe_random")
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------------ arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--unlabeled", default=None, help="folder of unlabeled audio (default: built-in synthetic pool)")
    g.add_argument("--unlabeled-clips", type=int, default=2400, help="size of the built-in unlabeled pool")
    g.add_argument("--unlabeled-seed", type=int, default=1000, help="seed of the built-in unlabeled pool")
    g.add_argument("--esc50", default=None, help="labeled set in ESC-50 layout (default: built-in, written to OUT)")
    g.add_argument("--per-class", type=int, default=10,
                   help="clips per class of the built-in labeled set (a multiple of 5 keeps the folds balanced)")
    g.add_argument("--labeled-seed", type=int, default=7, help="seed of the built-in labeled set")
    g.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "maskspec_ssl_eval"),
                   help="where the built-in labeled set is written (reused when already there)")
    g.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="folds to cross-validate")
    g.add_argument("--clip-seconds", type=float, default=None,
                   help="clip length (default: 2.56 for the built-in data, 5 for --esc50)")
    g = p.add_argument_group("model (a CPU-sized MaskSpec; tiny preset is 192/12/3 with a 512/8/16 decoder)")
    g.add_argument("--embed-dim", type=int, default=192)
    g.add_argument("--depth", type=int, default=4)
    g.add_argument("--heads", type=int, default=3)
    g.add_argument("--decoder-dim", type=int, default=128)
    g.add_argument("--decoder-depth", type=int, default=2)
    g.add_argument("--decoder-heads", type=int, default=4)
    g = p.add_argument_group("pre-training")
    g.add_argument("--pretrain-steps", type=int, default=800)
    g.add_argument("--pretrain-batch", type=int, default=32)
    g.add_argument("--pretrain-lr", type=float, default=1e-3, help="peak AdamW lr (warm-up, then cosine)")
    g.add_argument("--mask-ratio", type=float, default=0.75)
    g.add_argument("--no-norm-pix", action="store_true", help="plain (not per-patch normalized) targets")
    g = p.add_argument_group("fine-tuning (both initializations use the same steps, batch, lr, augmentation)")
    g.add_argument("--finetune-steps", type=int, default=50)
    g.add_argument("--finetune-batch", type=int, default=32)
    g.add_argument("--finetune-lr", type=float, default=1e-3, help="peak AdamW lr of the head")
    g.add_argument("--layer-decay", type=float, default=0.75, help="pre-trained encoder only")
    g.add_argument("--drop-path", type=float, default=0.1)
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--patchout", type=int, default=48,
                   help="patch tokens dropped per clip while fine-tuning (PaSST/MaskSpec: 200 of 496)")
    g = p.add_argument_group("linear probe")
    g.add_argument("--probe-l2", type=float, default=1e-3, help="L2 penalty on the probe weights")
    g.add_argument("--probe-iters", type=int, default=200, help="L-BFGS iterations")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--out", default=str(RESULTS), help="output folder (ssl_eval.json, ssl_eval.png, ...)")
    g.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model, few clips and steps, 2 folds (numbers mean nothing)")
    return p


def apply_quick(args: argparse.Namespace) -> None:
    """Tiny settings: the whole pipeline in well under a minute on 2 cores."""
    args.unlabeled_clips = min(args.unlabeled_clips, 64)
    args.per_class = min(args.per_class, 2)
    args.folds = args.folds[:2]
    args.clip_seconds = args.clip_seconds or 1.28
    args.embed_dim, args.depth, args.heads = 32, 1, 2
    args.decoder_dim, args.decoder_depth, args.decoder_heads = 32, 1, 2
    args.pretrain_steps, args.pretrain_batch = 6, 16
    args.finetune_steps, args.finetune_batch, args.patchout = 4, 8, 16
    args.probe_iters = 20


# ------------------------------------------------------------------------------------------------ data
@torch.no_grad()
def to_logmel(dataset, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip of ``dataset`` -> log-mel ``(N, 128, T)`` and labels ``(N,)`` (fixed mel bank)."""
    frontend = LogMel().eval()
    specs, labels = [], []
    for start in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
        specs.append(frontend(torch.stack([s["wave"] for s in items])))
        labels.append(torch.stack([s["label"] for s in items]))
    return torch.cat(specs), torch.cat(labels)


def unlabeled_specs(args) -> tuple[torch.Tensor, str]:
    from maskspec_fast.data import AudioFolder, SyntheticSounds

    if args.unlabeled:
        ds = AudioFolder(args.unlabeled, clip_seconds=args.clip_seconds)
        desc = f"folder {args.unlabeled} ({len(ds)} clips)"
    else:
        ds = SyntheticSounds(args.unlabeled_clips, seed=args.unlabeled_seed, clip_seconds=args.clip_seconds,
                             labeled=False)
        desc = f"built-in SyntheticSounds({args.unlabeled_clips}, seed={args.unlabeled_seed}, labeled=False)"
    return to_logmel(ds)[0], desc


def labeled_folds(args) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], list[str], str]:
    """{fold: (specs (n, 128, T), labels (n,))}, class names, description."""
    from maskspec_fast.data import ESC50, SyntheticSounds

    root = args.esc50
    if root is None:
        root = Path(args.data_dir) / f"esc50_synthetic_seed{args.labeled_seed}_{args.per_class}pc_{args.clip_seconds}s"
        if not (root / "meta" / "esc50.csv").is_file():
            n = args.per_class * len(SyntheticSounds.CLASS_NAMES)
            SyntheticSounds(n, seed=args.labeled_seed, clip_seconds=args.clip_seconds).write_folder(
                root, args.per_class, layout="esc50")
        desc = (f"built-in: SyntheticSounds(seed={args.labeled_seed}).write_folder({args.per_class} per class, "
                f"layout='esc50') at {root}")
    else:
        desc = f"ESC-50 layout at {root}"
    folds, names = {}, []
    for k in args.folds:
        ds = ESC50(root, folds=(k,), clip_seconds=args.clip_seconds)
        folds[k] = to_logmel(ds)
        names = ds.class_names
    return folds, names, desc


def roll_time(spec: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Augmentation: circular shift of each clip along time by a random number of frames ``(B, F, T)``."""
    t = spec.shape[-1]
    shifts = torch.randint(0, t, (spec.shape[0],), generator=gen)
    idx = (torch.arange(t).unsqueeze(0) - shifts.unsqueeze(1)) % t  # (B, T)
    return torch.gather(spec, 2, idx.unsqueeze(1).expand(-1, spec.shape[1], -1))


# ------------------------------------------------------------------------------------------------ training
def pretrain(model: Model, specs: torch.Tensor, args, log_every: int = 50) -> dict[str, Any]:
    """AdamW (betas 0.9/0.95, wd 0.05 off biases/norms/tokens), linear warm-up then cosine, clip-grad 1."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    opt = make_adamw(param_groups(model, 0.05), lr=args.pretrain_lr, betas=(0.9, 0.95))
    warmup = max(1, args.pretrain_steps // 20)
    curve, t0 = [], time.perf_counter()
    model.train()
    recent: list[float] = []
    for step in range(args.pretrain_steps):
        set_lr(opt, warmup_cosine(step, args.pretrain_steps, warmup, args.pretrain_lr))
        idx = torch.randint(0, specs.shape[0], (args.pretrain_batch,), generator=gen)
        loss, _, _ = model(specs[idx], mask_ratio=args.mask_ratio)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == args.pretrain_steps:
            curve.append({"step": step + 1, "loss": statistics.fmean(recent), "elapsed_s": time.perf_counter() - t0})
            print(f"  pretrain step {step + 1:5d}/{args.pretrain_steps}: loss {curve[-1]['loss']:.4f} "
                  f"({curve[-1]['elapsed_s']:.0f} s)", flush=True)
            recent = []
    model.eval()
    return {"curve": curve, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def heldout_loss(model: Model, specs: torch.Tensor, mask_ratio: float, seed: int) -> float:
    """Masked-patch loss on clips the model never saw, with a fixed mask (comparable across models)."""
    model.eval()
    noise = torch.rand(specs.shape[0], model.config.num_patches, generator=torch.Generator().manual_seed(seed))
    return float(model(specs, mask_ratio=mask_ratio, noise=noise)[0])


def finetune(clf: Classifier, x: torch.Tensor, y: torch.Tensor, args, layer_decay: float | None, seed: int) -> None:
    """Whole-model fine-tuning: AdamW (wd 0.05), warm-up + cosine, label smoothing, drop-path, random time roll."""
    gen = torch.Generator().manual_seed(seed)
    opt = make_adamw(param_groups(clf, 0.05, layer_decay=layer_decay), lr=args.finetune_lr,
                            betas=(0.9, 0.999))
    warmup = max(1, args.finetune_steps // 10)
    clf.patchout = args.patchout
    clf.train()
    for step in range(args.finetune_steps):
        set_lr(opt, warmup_cosine(step, args.finetune_steps, warmup, args.finetune_lr))
        idx = torch.randperm(x.shape[0], generator=gen)[: args.finetune_batch]
        loss = F.cross_entropy(clf(roll_time(x[idx], gen)), y[idx], label_smoothing=args.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
        opt.step()
    clf.eval()


@torch.no_grad()
def predict(clf: Classifier, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    clf.eval()
    return torch.cat([clf(x[i : i + batch]) for i in range(0, x.shape[0], batch)]).argmax(-1)


@torch.no_grad()
def embed(clf: Classifier, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Frozen clip embeddings ``(N, D)``: mean of the patch tokens, layer-normalized (``Classifier.embed``)."""
    clf.eval()
    return torch.cat([clf.embed(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def linear_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, num_classes: int, l2: float,
                 iters: int) -> torch.Tensor:
    """Multinomial logistic regression on standardized features (train-fold statistics), fitted by L-BFGS:

    ``min_{W,b} mean_i CE(W z_i + b, y_i) + l2 * ||W||^2``,  z = (x - mu) / sigma.  Returns test predictions.
    """
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    ztr, zte = (xtr - mu) / sd, (xte - mu) / sd
    w = torch.zeros(ztr.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    ztr64, zte64 = ztr.double(), zte.double()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(ztr64 @ w + b, ytr) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (zte64 @ w + b).argmax(-1)


# ------------------------------------------------------------------------------------------------ experiment
def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        apply_quick(args)
    if args.clip_seconds is None:
        args.clip_seconds = 5.0 if args.esc50 else 2.56
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    folds, class_names, labeled_desc = labeled_folds(args)
    unl, unlabeled_desc = unlabeled_specs(args)
    timings["data_s"] = time.perf_counter() - t
    frames = num_frames(int(round(args.clip_seconds * SAMPLE_RATE))) // 16 * 16
    unl, folds = unl[..., :frames], {k: (s[..., :frames], y) for k, (s, y) in folds.items()}
    n_labeled = sum(int(y.numel()) for _, y in folds.values())
    print(f"unlabeled: {unlabeled_desc} -> {tuple(unl.shape)}")
    print(f"labeled:   {labeled_desc} -> {n_labeled} clips, {len(class_names)} classes, folds {args.folds}")

    config = ModelConfig(
        frames=frames, embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads,
        decoder_embed_dim=args.decoder_dim, decoder_depth=args.decoder_depth, decoder_num_heads=args.decoder_heads,
        mask_ratio=args.mask_ratio, norm_pix_loss=not args.no_norm_pix, preset="custom",
    )
    torch.manual_seed(args.seed)
    model = Model(config)
    random_model = Model(config)
    random_model.load_state_dict(model.state_dict())  # the untouched initialization: the "random" baselines
    heldout = torch.cat([s for s, _ in folds.values()])[:64]
    loss_before = heldout_loss(model, heldout, args.mask_ratio, args.seed)
    n_enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("patch_embed", "blocks", "cls")))
    print(f"model: encoder {args.embed_dim}/{args.depth}/{args.heads} ({n_enc / 1e6:.2f}M params), decoder "
          f"{args.decoder_dim}/{args.decoder_depth}/{args.decoder_heads}, {config.num_patches} patches of "
          f"{config.grid_f}x{config.grid_t}; pre-training {args.pretrain_steps} steps x {args.pretrain_batch}")

    pt = pretrain(model, unl, args, log_every=max(1, args.pretrain_steps // 12))
    timings["pretrain_s"] = pt["seconds"]
    loss_after = heldout_loss(model, heldout, args.mask_ratio, args.seed)
    print(f"held-out masked loss (fixed masks, {heldout.shape[0]} labeled clips): random init {loss_before:.4f} -> "
          f"pre-trained {loss_after:.4f}")
    del unl

    recon = _reconstructions(model, heldout[:4], args, out)

    num_classes = len(class_names)
    acc: dict[str, list[float]] = {s: [] for s in SETTINGS}
    seconds: dict[str, float] = {s: 0.0 for s in SETTINGS}
    emb: dict[str, dict[int, torch.Tensor]] = {}
    t = time.perf_counter()
    for name, src in (("pretrained", model), ("random", random_model)):
        clf = Classifier.from_model(src, num_classes)
        emb[name] = {k: embed(clf, s) for k, (s, _) in folds.items()}
    t_embed = (time.perf_counter() - t) / 2
    for k in args.folds:
        train_k = [j for j in args.folds if j != k]
        xtr = torch.cat([folds[j][0] for j in train_k])
        ytr = torch.cat([folds[j][1] for j in train_k])
        xte, yte = folds[k]
        row = {}
        for name, src in (("pretrained", model), ("random", random_model)):
            t = time.perf_counter()
            clf = Classifier.from_model(src, num_classes, drop_path_rate=args.drop_path)
            finetune(clf, xtr, ytr, args, args.layer_decay if name == "pretrained" else None,
                     seed=args.seed * 1000 + k)
            a = float((predict(clf, xte) == yte).float().mean())
            acc[f"finetune_{name}"].append(a)
            seconds[f"finetune_{name}"] += time.perf_counter() - t
            row[f"finetune_{name}"] = a
            t = time.perf_counter()
            etr = torch.cat([emb[name][j] for j in train_k])
            pred = linear_probe(etr, ytr, emb[name][k], num_classes, args.probe_l2, args.probe_iters)
            a = float((pred == yte).float().mean())
            acc[f"probe_{name}"].append(a)
            seconds[f"probe_{name}"] += time.perf_counter() - t + t_embed / len(args.folds)
            row[f"probe_{name}"] = a
        print(f"  fold {k} ({yte.numel()} test clips): " + ", ".join(f"{s} {row[s]:.3f}" for s in SETTINGS),
              flush=True)
    timings.update({f"{s}_s": v for s, v in seconds.items()})
    timings["total_s"] = time.perf_counter() - t_start

    summary = {s: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                   "per_fold": dict(zip(map(str, args.folds), v))} for s, v in acc.items()}
    result = {
        "benchmark": "ssl_eval",
        "environment": environment(torch.device("cpu")),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "settings": {k: v for k, v in vars(args).items()},
        "model_config": config.to_dict(),
        "encoder_params": n_enc,
        "data": {"unlabeled": unlabeled_desc, "labeled": labeled_desc, "labeled_clips": n_labeled,
                 "classes": class_names, "chance": 1.0 / num_classes, "frames": frames},
        "pretraining": {"curve": pt["curve"], "heldout_loss_random_init": loss_before,
                        "heldout_loss_pretrained": loss_after},
        "accuracy": summary,
        "timings_s": timings,
        "files": {"reconstructions": str(recon)},
    }
    result["files"]["plot"] = str(_plot(summary, result, out))
    path = out / "ssl_eval.json"
    write_json(str(path), result)
    _print_table(summary, timings, 1.0 / num_classes)
    print(f"also wrote {result['files']['plot']}, {recon}")
    return result


def _reconstructions(model: Model, specs: torch.Tensor, args, out: Path) -> Path:
    from maskspec_fast.viz import save_reconstructions

    g = torch.Generator().manual_seed(args.seed)
    noise = torch.rand(specs.shape[0], model.config.num_patches, generator=g)
    with torch.no_grad():
        _, pred, mask = model(specs, mask_ratio=args.mask_ratio, noise=noise)
    return save_reconstructions(specs, pred, mask, out / "ssl_eval_reconstructions.png", model.config.patch_size,
                                model.config.norm_pix_loss,
                                f"held-out clips after {args.pretrain_steps} pre-training steps")


def _plot(summary: dict, result: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.4, 1]})
    data = [list(summary[s]["per_fold"].values()) for s in SETTINGS]
    ax.boxplot(data, showmeans=True)
    for i, d in enumerate(data, 1):
        ax.scatter([i + 0.08 * (j - len(d) / 2) / max(1, len(d)) for j in range(len(d))], d, s=12, color="k",
                   zorder=3)
    ax.set_xticks(range(1, len(SETTINGS) + 1), [s.replace("_", "\n") for s in SETTINGS])
    ax.axhline(result["data"]["chance"], color="gray", ls=":", label="chance")
    ax.set_ylabel("accuracy (per fold)")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title(f"{len(data[0])}-fold CV, {result['data']['labeled_clips']} labeled clips")
    curve = result["pretraining"]["curve"]
    ax2.plot([c["step"] for c in curve], [c["loss"] for c in curve], marker="o")
    ax2.axhline(result["pretraining"]["heldout_loss_random_init"], color="gray", ls=":", label="held-out, init")
    ax2.axhline(result["pretraining"]["heldout_loss_pretrained"], color="C1", ls="--", label="held-out, final")
    ax2.set_xlabel("pre-training step")
    ax2.set_ylabel("masked-patch loss")
    ax2.set_title("pre-training")
    ax2.legend()
    fig.tight_layout()
    path = out / "ssl_eval.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _print_table(summary: dict, timings: dict, chance: float) -> None:
    print(f"\n{'setting':<22}{'accuracy mean +- std':>22}{'per fold':>40}{'time (s)':>10}")
    for s in SETTINGS:
        folds = " ".join(f"{v:.2f}" for v in summary[s]["per_fold"].values())
        print(f"{s:<22}{summary[s]['mean']:>14.3f} +- {summary[s]['std']:.3f}{folds:>40}{timings[s + '_s']:>10.0f}")
    print(f"(chance {chance:.3f}; pre-training {timings['pretrain_s']:.0f} s, total {timings['total_s']:.0f} s)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if math.isnan(args.mask_ratio) or not 0 <= args.mask_ratio < 1:
        raise SystemExit("--mask-ratio must be in [0, 1)")
    return run(args)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once under nohup / pipes
    main()
