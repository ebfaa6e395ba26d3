"""Does MaskSpec pre-training help? A rerunnable end-to-end experiment on CPU.

1. Pre-train a small MaskSpec model (masked-patch reconstruction) on unlabeled audio: a folder (``--unlabeled``) or
   the built-in procedural sounds (``SyntheticSounds``, a large pool drawn with its own seed).
2. On a labeled set in the ESC-50 layout (``--esc50``; default: a small built-in one written with
   ``SyntheticSounds.write_folder(..., layout="esc50")`` from another seed) run k-fold cross-validation of
     finetune_pretrained  fine-tune the whole classifier, encoder from the pre-trained Model (layer-wise lr decay)
     finetune_random      the same recipe from a randomly initialized encoder (no layer decay: nothing to keep)
     probe_pretrained     logistic regression (L-BFGS, L2) on frozen pre-trained clip embeddings
     probe_random         the same on the frozen random encoder the random fine-tuning starts from
     logmel_baseline      no deep model: per-bin mean and std over time of the log-mel (2 x 128 features),
                          the same logistic regression on the same folds
3. Print accuracy mean +- std over folds, per-class accuracy; write JSON (settings, per-fold accuracies, per-class
   accuracies, confusion matrices, timings, versions, commit), a box plot, a confusion-matrix picture and
   reconstruction pictures of held-out clips.

Fine-tuning follows :mod:`maskspec_fast.train.recipe` (the same defaults as ``python -m maskspec_fast.train
finetune``): length in epochs, warm-up, layer-wise lr decay, a validation split taken from the training folds,
best-checkpoint selection and early stopping on it. Every (setting, fold) pair draws from its own random stream
(``stream_seed``): changing one setting's length or order leaves every other number unchanged.

    python experiments/ssl_eval.py                       # the default experiment (3.5 min on 2 idle CPU cores)
    python experiments/ssl_eval.py --quick --out /tmp/q  # smoke run (well under a minute)
    python experiments/ssl_eval.py --esc50 /data/ESC-50 --unlabeled /data/unlabeled --clip-seconds 5
    python experiments/build_real_eval.py --out /tmp/real && \
        python experiments/ssl_eval.py --esc50 /tmp/real/labeled --unlabeled /tmp/real/unlabeled --out /tmp/r  # 11 min

Every log-mel is computed once up front (fixed mel bank, no jitter): the model cost dominates and all settings
see identical inputs. Accuracy is the fraction of correctly classified clips of the held-out fold.
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # _common: environment record
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import environment, write_json  # noqa: E402

from maskspec_fast import Classifier, Model, ModelConfig  # noqa: E402
from maskspec_fast.config import POOLS  # noqa: E402
from maskspec_fast.data.tensors import SpecTensors  # noqa: E402
from maskspec_fast.frontend.logmel import SAMPLE_RATE, LogMel, num_frames  # noqa: E402
from maskspec_fast.model import pool_patch_tokens  # noqa: E402
from maskspec_fast.train import TrainConfig  # noqa: E402
from maskspec_fast.train import finetune as package_finetune  # noqa: E402
from maskspec_fast.train import recipe as recipes  # noqa: E402
from maskspec_fast.train import train as package_train  # noqa: E402
from maskspec_fast.train.finetune import fit_head  # noqa: E402
from maskspec_fast.train.recipe_flags import add_recipe_flags, recipe_from_flags  # noqa: E402
from maskspec_fast.train.tasks import PretrainTask  # noqa: E402

SETTINGS = ("finetune_pretrained", "finetune_random", "probe_pretrained", "probe_random", "logmel_baseline")
RESULTS = Path(__file__).resolve().parent.parent / "runs" / "experiments"  # scratch output, ignored by git; keep a run in results/
# the recipe fields the harness takes on its command line, and the flags named otherwise than in `train finetune`
HARNESS_RECIPE_FIELDS = ("epochs", "warmup_epochs", "batch_size", "lr", "betas", "layer_decay", "drop_path",
                         "label_smoothing", "patchout_fraction", "time_roll", "freq_mask", "time_mask", "gain_db",
                         "tilt_db", "mixup", "val_fraction", "patience", "eval_every_epochs", "pool", "refit_head",
                         "head_init")
HARNESS_FLAG_NAMES = {"epochs": "--finetune-epochs", "batch_size": "--finetune-batch", "lr": "--finetune-lr"}


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
    g.add_argument("--test-folds", type=int, nargs="+", default=None,
                   help="held-out folds to evaluate (default: all of --folds); the others of --folds still train")
    g.add_argument("--clip-seconds", type=float, default=None,
                   help="clip length (default: 2.56 for the built-in data, 5 for --esc50)")
    g.add_argument("--unlabeled-seconds", type=float, default=None,
                   help="length read from each unlabeled file (default: 10 for --unlabeled, AudioSet's clip length; "
                        "--clip-seconds for the built-in pool); the reads are cut into non-overlapping "
                        "--pretrain-frames windows; silent windows (digital silence, or the padding of shorter files) "
                        "are dropped and counted")
    g.add_argument("--norm-stats", choices=["none", "unlabeled"], default="none",
                   help="standardize each mel bin with mean/std measured on the unlabeled set (the paper's code)")
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
    g.add_argument("--norm-pix", action=argparse.BooleanOptionalAction, default=None,
                   help="per-patch normalized reconstruction targets (MAE's norm_pix_loss). Default: plain targets "
                        "with --unlabeled recordings, normalized ones for the built-in procedural pool (each was "
                        "measured the better one on its data, SSL_EVAL.md)")
    g.add_argument("--pretrain-frames", type=int, default=256,
                   help="pre-train on windows of this many frames cut from the unlabeled clips (a multiple of 16; "
                        "0: the labeled clip length). Shorter windows are cheaper; the fixed sin-cos "
                        "positions let the encoder fine-tune on the full length")
    g.add_argument("--pretrained-cache", default=None,
                   help="a save_pretrained folder: loaded instead of pre-training when it exists (same settings!), "
                        "else written after pre-training (for exploring fine-tuning settings)")
    g = p.add_argument_group("fine-tuning (maskspec_fast.train.recipe; unset flags take the recipe's defaults)")
    # the recipe's flags as `train finetune` declares them (maskspec_fast.train.recipe_flags), some under the
    # harness's own names
    add_recipe_flags(g, HARNESS_RECIPE_FIELDS, HARNESS_FLAG_NAMES)
    g.add_argument("--wise-alpha", type=float, default=1.0,
                   help="WiSE-FT, an experiment outside the recipe: final weights (1 - a) * start + a * selected "
                        "(1: the selected model)")
    g = p.add_argument_group("linear probe and baseline")
    g.add_argument("--probe-l2", type=float, default=1e-3, help="L2 penalty on the probe weights")
    g.add_argument("--probe-iters", type=int, default=200, help="L-BFGS iterations")
    g.add_argument("--probe-layer", type=int, default=-1,
                   help="encoder block whose patch tokens are mean-pooled for the probe (-1: the last)")
    g.add_argument("--probe-pool", choices=list(POOLS), default=None,
                   help="probe features: mean over all patch tokens, or per frequency row (see embed()); default: "
                        "the recipe's pool, so the probe and fine-tuning read the encoder the same way")
    g.add_argument("--probe-sweep", action="store_true",
                   help="also probe every encoder block with both poolings (table 'probe_sweep' in the JSON)")
    g = p.add_argument_group("run")
    g.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS), help="settings to run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--fold-workers", type=int, default=0,
                   help="evaluate the held-out folds in this many forked processes of one thread each (same numbers; "
                        "0: one per CPU core, at most one per fold)")
    g.add_argument("--out", default=str(RESULTS), help="output folder (ssl_eval.json, ssl_eval.png, ...)")
    g.add_argument("--tag", default="ssl_eval", help="output file stem (TAG.json, TAG.png, TAG_confusion.png)")
    g.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model, few clips and steps, 2 folds (numbers mean nothing)")
    return p


def recipe_from_args(args: argparse.Namespace) -> recipes.FinetuneRecipe:
    """The recipe's defaults with the flags that were given on top (``--probe-l2`` is the head's L2 too)."""
    dests = {f: (HARNESS_FLAG_NAMES.get(f, "--" + f.replace("_", "-"))[2:].replace("-", "_"))
             for f in HARNESS_RECIPE_FIELDS}
    r = recipe_from_flags(args, dests)
    l2 = getattr(args, "probe_l2", None)
    return r.replace(head_l2=l2) if l2 is not None else r


def apply_quick(args: argparse.Namespace) -> None:
    """Tiny settings: the whole pipeline in well under a minute on 2 cores."""
    args.unlabeled_clips = min(args.unlabeled_clips, 64)
    args.per_class = min(args.per_class, 2)
    args.folds = args.folds[:2]
    args.clip_seconds = args.clip_seconds or 1.28
    args.embed_dim, args.depth, args.heads = 32, 1, 2
    args.decoder_dim, args.decoder_depth, args.decoder_heads = 32, 1, 2
    args.pretrain_steps, args.pretrain_batch = 6, 16
    args.finetune_epochs = args.finetune_epochs or 4
    args.finetune_batch = args.finetune_batch or 8
    args.val_fraction = 0.0 if args.val_fraction is None else args.val_fraction
    args.probe_iters = 20


def model_config(args: argparse.Namespace, frames: int) -> ModelConfig:
    """The CPU-sized MaskSpec of the model flags, for clips of ``frames`` frames."""
    return ModelConfig(
        frames=frames, embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads,
        decoder_embed_dim=args.decoder_dim, decoder_depth=args.decoder_depth, decoder_num_heads=args.decoder_heads,
        mask_ratio=args.mask_ratio, norm_pix_loss=bool(args.norm_pix), preset="custom",
    )


def stream_seed(seed: int, setting: str, fold: int) -> int:
    """The seed of one (setting, fold) pair: SeedSequence over (seed, crc32(setting), fold) -> 63 bits. Each
    pair's randomness (head init, batch order, augmentation, drop path, patchout) comes from it alone."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(setting.encode()), int(fold)])
    a, b = s.generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


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
        ds = AudioFolder(args.unlabeled, clip_seconds=args.unlabeled_seconds)
        desc = f"folder {args.unlabeled} ({len(ds)} clips)"
    else:
        ds = SyntheticSounds(args.unlabeled_clips, seed=args.unlabeled_seed, clip_seconds=args.unlabeled_seconds,
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


def interpolate_states(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                       alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT (Wortsman et al., 2022): ``(1 - alpha) * start + alpha * end`` for every floating-point tensor of two
    state dicts of the same model (integer buffers are taken from ``end``)."""
    return {k: torch.lerp(start[k].to(v.dtype), v, alpha) if v.is_floating_point() else v for k, v in end.items()}


def pretraining_windows(specs: torch.Tensor, frames: int) -> tuple[torch.Tensor, int]:
    """Cut log-mels ``(N, F, T)`` into non-overlapping windows ``(N * W, F, frames)``, ``W = T // frames`` (the
    rest of each clip is dropped), leaving out silent windows (every bin at the log floor: digital silence, or the
    zero padding of a file shorter than the read length), which carry nothing to reconstruct. Returns the windows
    and how many were left out."""
    n, f, t = specs.shape
    w = max(1, t // frames)
    win = specs[..., : w * frames].reshape(n, f, w, frames).permute(0, 2, 1, 3).reshape(-1, f, frames)
    floor = float(LogMel()(torch.zeros(1, 4000)).max())  # the log-mel of silence
    silent = win.amax(dim=(1, 2)) <= floor + 1e-6
    return win[~silent], int(silent.sum())


def bin_stats(specs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mel-bin mean and std over clips and frames: ``(F,)``, ``(F,)`` (std floored at 1e-3)."""
    return specs.mean(dim=(0, 2)), specs.std(dim=(0, 2)).clamp_min(1e-3)


def logmel_features(spec: torch.Tensor) -> torch.Tensor:
    """The trivial baseline's features: per-bin mean and std over time, ``(N, F, T) -> (N, 2F)``."""
    return torch.cat([spec.mean(-1), spec.std(-1)], dim=1)


# ------------------------------------------------------------------------------------------------ training
def pretrain_config(steps: int, batch: int, lr: float, warmup: int, seed: int, out: str | Path,
                    log_every: int = 1) -> TrainConfig:
    """The :class:`~maskspec_fast.train.TrainConfig` that ``python -m maskspec_fast.train pretrain --steps STEPS
    --batch-size BATCH --lr LR --warmup-steps WARMUP --seed SEED --no-mel-jitter`` resolves on the CPU: the CLI's own
    parser and defaults (AdamW betas (0.9, 0.95), weight decay 0.05 off biases/norms/tokens, gradients clipped to
    norm 1, cosine to 0 after the warm-up, fp32), so the harness pre-trains with what users run. No mel jitter: the
    harness's log-mel is computed once, with the fixed bank."""
    from maskspec_fast.train.cli import build_parser as train_cli

    argv = ["pretrain", "--data", "(precomputed log-mel)", "--steps", str(steps), "--batch-size", str(batch),
            "--lr", repr(float(lr)), "--warmup-steps", str(warmup), "--seed", str(seed), "--workers", "0",
            "--device", "cpu", "--precision", "fp32", "--save-every", "0", "--keep", "1", "--picture-every", "0",
            "--log-every", str(log_every), "--quiet", "--no-mel-jitter", "--out", str(out)]
    return TrainConfig.from_args(train_cli().parse_args(argv))


def pretrain_on_specs(model: Model, specs: torch.Tensor, run: TrainConfig) -> dict[str, Any]:
    """Pre-train ``model`` on log-mel windows ``specs (N, F, T)`` through the package's :func:`maskspec_fast.train.train`
    (``PretrainTask``, one mask per clip) on a :class:`SpecTensors` source; the trainer's summary (``losses``: one per
    step)."""
    source = SpecTensors(specs, torch.full((specs.shape[0],), -1, dtype=torch.long), num_classes=0, seed=run.seed)
    result = package_train(PretrainTask(model), source, run, LogMel(), torch.device("cpu"), log=_silent)
    model.eval()
    return result


def pretrain(model: Model, specs: torch.Tensor, args, log_every: int = 50) -> dict[str, Any]:
    """Pre-train as ``train pretrain`` does (:func:`pretrain_config`): ``--pretrain-steps`` steps of
    ``--pretrain-batch`` windows (epochs over the windows in the trainer's seeded order), peak lr ``--pretrain-lr``
    after a warm-up of 5% of the steps. The curve averages the per-step losses over ``log_every`` steps."""
    seed = stream_seed(args.seed, "pretrain", 0) % (2**31 - 1)  # the trainer's seeds are 31-bit
    warmup = max(1, args.pretrain_steps // 20)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ssl_eval_pt_") as tmp:
        run = pretrain_config(args.pretrain_steps, args.pretrain_batch, args.pretrain_lr, warmup, seed, tmp,
                              log_every=max(1, log_every))
        result = pretrain_on_specs(model, specs, run)
    losses = result["losses"]
    curve = [{"step": min(s + log_every, len(losses)), "loss": statistics.fmean(losses[s : s + log_every])}
             for s in range(0, len(losses), log_every)]
    seconds = time.perf_counter() - t0
    print(f"  pretrain: {len(losses)} steps in {seconds:.0f} s; loss {curve[0]['loss']:.4f} (first {log_every}) -> "
          f"{curve[-1]['loss']:.4f} (last {log_every})", flush=True)
    return {"curve": curve, "seconds": seconds, "settings": run.to_dict()}


@torch.no_grad()
def heldout_loss(model: Model, specs: torch.Tensor, mask_ratio: float, seed: int) -> float:
    """Masked-patch loss on clips the model never saw, with a fixed mask (comparable across models)."""
    model.eval()
    noise = torch.rand(specs.shape[0], model.config.num_patches, generator=torch.Generator().manual_seed(seed))
    return float(model(specs, mask_ratio=mask_ratio, noise=noise)[0])


def finetune(clf: Classifier, x: torch.Tensor, y: torch.Tensor, recipe: recipes.FinetuneRecipe, seed: int,
             num_classes: int, verbose: bool = False, wise_alpha: float = 1.0) -> dict[str, Any]:
    """Fine-tune ``clf`` on the training clips ``x (N, F, T)``, ``y (N,)`` with the package's procedure
    (:func:`maskspec_fast.train.finetune`: split, LP-FT head, trainer, selection, head refit) on precomputed
    log-mel (:class:`~maskspec_fast.data.tensors.SpecTensors`); returns a report. The test fold is never seen.

    ``wise_alpha < 1``: WiSE-FT, an experiment option outside the recipe (measured no better, SSL_EVAL.md): the
    selected encoder is interpolated with the starting weights and the head refitted on all training clips again.
    """
    start_state = copy.deepcopy(clf.state_dict()) if wise_alpha < 1.0 else None
    seed = seed % (2**31 - 1)  # the trainer's seeds are 31-bit (generator seeds get an epoch added)
    source = SpecTensors(x, y, num_classes=num_classes, seed=seed)
    with tempfile.TemporaryDirectory(prefix="ssl_eval_ft_") as tmp:
        run = TrainConfig(out=tmp, seed=seed, workers=0, save_every=0, keep=1, quiet=True, log_every=1000)
        result = package_finetune(clf, source, recipe, run, log=print if verbose else _silent)
    if wise_alpha < 1.0:
        clf.load_state_dict(interpolate_states(start_state, clf.state_dict(), wise_alpha))
        if recipe.refit_head:
            fit_head(clf, source, recipe, torch.device("cpu"), batch_size=64, workers=0)
    clf.eval()
    history = [{"step": e["step"], "val_accuracy": e["value"], "val_loss": e["loss"]} for e in result.evals]
    return {"steps_planned": result.settings["train"]["steps"], "steps_run": result.steps,
            "best_step": result.selected_step, "fit_clips": result.fit_clips, "val_clips": result.val_clips,
            "history": history}


def _silent(*_a: Any, **_k: Any) -> None:
    pass


@torch.no_grad()
def logits_of(clf: Classifier, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    clf.eval()
    return torch.cat([clf(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def embed(clf: Classifier, x: torch.Tensor, batch: int = 64, layer: int = -1, pool: str | None = None) -> torch.Tensor:
    """Frozen clip embeddings from the patch tokens after encoder block ``layer`` (-1: the last), pooled by
    ``pool`` (default: the classifier's own, ``clf.config.pool``; see :func:`~maskspec_fast.model.pool_patch_tokens`, with
    parameter-free norms below the last block). For the last block with
    the classifier's own pooling this is exactly ``clf.embed`` (its ``fc_norm``/``std_norm``)."""
    clf.eval()
    depth = len(clf.blocks)
    layer = depth - 1 if layer == -1 else layer
    pool = pool or clf.config.pool
    if pool == clf.config.pool and layer == depth - 1:
        return torch.cat([clf.embed(x[i : i + batch]) for i in range(0, x.shape[0], batch)])
    gf = x.shape[1] // clf.config.patch_size
    outs = []
    full = clf.blocks
    try:
        clf.blocks = full[: layer + 1]  # the same forward, stopped after block `layer`
        for i in range(0, x.shape[0], batch):
            outs.append(pool_patch_tokens(clf.forward_features(x[i : i + batch])[:, 1:], gf, pool))
    finally:
        clf.blocks = full
    return torch.cat(outs)


@torch.no_grad()
def embed_all_layers(clf: Classifier, x: torch.Tensor, batch: int = 64) -> dict[tuple[int, str], torch.Tensor]:
    """Every block's pooled tokens in one forward pass (forward hooks on the blocks): ``{(layer, pool): (N, ...)}``
    for every pool of ``POOLS``, pooled by ``pool_patch_tokens`` (parameter-free LayerNorm, also for the last block)."""
    clf.eval()
    gf = x.shape[1] // clf.config.patch_size
    outs: dict[tuple[int, str], list[torch.Tensor]] = {}

    def hook(i):
        def fn(_module, _inp, out):
            for pool in POOLS:
                outs.setdefault((i, pool), []).append(pool_patch_tokens(out[:, 1:], gf, pool))
        return fn

    handles = [blk.register_forward_hook(hook(i)) for i, blk in enumerate(clf.blocks)]
    try:
        for i in range(0, x.shape[0], batch):
            clf.forward_features(x[i : i + batch])
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v) for k, v in outs.items()}


def cross_validated_probe(feats: dict[int, torch.Tensor], labels: dict[int, torch.Tensor], test_folds: list[int],
                          num_classes: int, l2: float, iters: int) -> list[float]:
    """Accuracy on each of ``test_folds`` of :func:`linear_probe` trained on all other folds of ``feats``
    (``{fold: (N_k, D)}``, labels ``{fold: (N_k,)}``), in ``test_folds`` order."""
    accs = []
    for k in test_folds:
        tr = [j for j in sorted(feats) if j != k]
        pred = linear_probe(torch.cat([feats[j] for j in tr]), torch.cat([labels[j] for j in tr]), feats[k],
                            num_classes, l2, iters)
        accs.append(float((pred == labels[k]).float().mean()))
    return accs


def probe_sweep(models: dict[str, Model], folds: dict[int, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                args: argparse.Namespace, test_folds: list[int]) -> dict[str, dict[str, float]]:
    """Linear-probe accuracy for every (encoder, block, pooling): ``{"pretrained/L2/freq": {"mean", "std",
    "per_fold"}}``. Deterministic (L-BFGS from zeros on frozen features), so no random stream is involved."""
    keys = sorted(folds)
    out = {}
    for init, m in models.items():
        clf = Classifier.from_model(m, num_classes)
        feats = {k: embed_all_layers(clf, folds[k][0]) for k in keys}
        for key in feats[keys[0]]:
            accs = cross_validated_probe({k: f[key] for k, f in feats.items()}, {k: y for k, (_, y) in folds.items()},
                                         test_folds, num_classes, args.probe_l2, args.probe_iters)
            name = f"{init}/L{key[0]}/{key[1]}"
            out[name] = {"mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "per_fold": dict(zip(map(str, test_folds), accs))}
            print(f"  probe sweep {name:<24} {out[name]['mean']:.3f} +- {out[name]['std']:.3f}", flush=True)
    return out


def fit_probe(xtr: torch.Tensor, ytr: torch.Tensor, num_classes: int, l2: float,
              iters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recipe's logistic regression (:func:`maskspec_fast.train.recipe.fit_logistic_regression`)."""
    return recipes.fit_logistic_regression(xtr, ytr, num_classes, l2, iters)


def linear_probe(xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor, num_classes: int, l2: float,
                 iters: int) -> torch.Tensor:
    """:func:`fit_probe` on the training features, predictions ``(N_test,)`` for ``xte``."""
    w, b, mu, sd = fit_probe(xtr, ytr, num_classes, l2, iters)
    return ((((xte - mu) / sd).double()) @ w + b).argmax(-1)


# ------------------------------------------------------------------------------------------------ experiment
def evaluate_folds(models: dict[str, Model], folds: dict[int, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                   args: argparse.Namespace, settings: list[str] | tuple[str, ...],
                   test_folds: list[int] | None = None) -> dict[str, Any]:
    """Cross-validate ``settings`` (each held-out fold of ``test_folds`` in turn; the other folds train).

    ``models``: ``{"pretrained": Model, "random": Model}`` (never modified). Every (setting, fold) pair starts
    from ``stream_seed(args.seed, setting, fold)``, so its number does not depend on which other settings ran,
    in what order, or how long. Returns per-setting accuracies per fold, predictions, reports and seconds.
    """
    recipe = recipe_from_args(args)
    keys = sorted(folds)
    test_folds = list(test_folds or keys)
    acc: dict[str, dict[int, float]] = {s: {} for s in settings}
    preds: dict[str, dict[int, torch.Tensor]] = {s: {} for s in settings}
    reports: dict[str, dict[int, dict]] = {s: {} for s in settings}
    seconds: dict[str, float] = {s: 0.0 for s in settings}
    for k in test_folds:
        train_k = [j for j in keys if j != k]
        xtr = torch.cat([folds[j][0] for j in train_k])
        ytr = torch.cat([folds[j][1] for j in train_k])
        xte, yte = folds[k]
        for s in settings:
            t = time.perf_counter()
            seed = stream_seed(args.seed, s, k)
            torch.manual_seed(seed)  # head initialization of a fresh Classifier
            kind, _, init = s.partition("_")
            if kind == "finetune":
                clf = Classifier.from_model(models[init], num_classes, drop_path_rate=recipe.drop_path,
                                            pool=recipe.pool)
                # a random encoder has nothing to keep: no layer-wise lr decay
                r = recipe if init == "pretrained" else recipe.replace(layer_decay=1.0)
                reports[s][k] = finetune(clf, xtr, ytr, r, seed, num_classes, verbose=not args.quick,
                                         wise_alpha=args.wise_alpha)
                pred = logits_of(clf, xte).argmax(-1)
            elif kind == "probe":
                clf = Classifier.from_model(models[init], num_classes)
                pool = args.probe_pool or recipe.pool
                etr = embed(clf, xtr, layer=args.probe_layer, pool=pool)
                ete = embed(clf, xte, layer=args.probe_layer, pool=pool)
                pred = linear_probe(etr, ytr, ete, num_classes, args.probe_l2, args.probe_iters)
            else:  # logmel_baseline
                pred = linear_probe(logmel_features(xtr), ytr, logmel_features(xte), num_classes, args.probe_l2,
                                    args.probe_iters)
            preds[s][k] = pred
            acc[s][k] = float((pred == yte).float().mean())
            seconds[s] += time.perf_counter() - t
        print(f"  fold {k} ({yte.numel()} test clips): " + ", ".join(f"{s} {acc[s][k]:.3f}" for s in settings),
              flush=True)
    return {"accuracy": acc, "predictions": preds, "reports": reports, "seconds": seconds}


def _one_fold(job: tuple) -> dict[str, Any]:
    """Worker of :func:`evaluate_folds_parallel`: one held-out fold on one CPU thread (forked process)."""
    models, folds, num_classes, args, settings, k = job
    torch.set_num_threads(1)
    return evaluate_folds(models, folds, num_classes, args, settings, [k])


def evaluate_folds_parallel(models: dict[str, Model], folds: dict[int, tuple[torch.Tensor, torch.Tensor]],
                            num_classes: int, args: argparse.Namespace, settings, test_folds: list[int] | None,
                            workers: int) -> dict[str, Any]:
    """:func:`evaluate_folds` with the held-out folds spread over ``workers`` forked processes (one thread each).
    Every (setting, fold) pair has its own stream, so the numbers equal a one-process run at one thread."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    test_folds = list(test_folds or sorted(folds))
    if workers <= 1 or len(test_folds) == 1:
        return evaluate_folds(models, folds, num_classes, args, settings, test_folds)
    jobs = [(models, folds, num_classes, args, list(settings), k) for k in test_folds]
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("fork")) as pool:
        parts = list(pool.map(_one_fold, jobs))
    merged: dict[str, Any] = {key: {s: {} for s in settings} for key in ("accuracy", "predictions", "reports")}
    merged["seconds"] = {s: 0.0 for s in settings}
    for part in parts:
        for key in ("accuracy", "predictions", "reports"):
            for s in settings:
                merged[key][s].update(part[key][s])
        for s in settings:
            merged["seconds"][s] += part["seconds"][s]  # summed over workers (CPU-side cost, not wall time)
    return merged


def confusion(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class."""
    return torch.bincount(true * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, -1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        apply_quick(args)
    if args.clip_seconds is None:
        args.clip_seconds = 5.0 if args.esc50 else 2.56
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.norm_pix is None:
        args.norm_pix = not args.unlabeled
    if args.unlabeled_seconds is None:
        args.unlabeled_seconds = 10.0 if args.unlabeled else args.clip_seconds
    if args.fold_workers <= 0:
        import os

        args.fold_workers = max(1, min(len(args.test_folds or args.folds), len(os.sched_getaffinity(0))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    t = time.perf_counter()
    folds, class_names, labeled_desc = labeled_folds(args)
    unl, unlabeled_desc = unlabeled_specs(args)
    timings["data_s"] = time.perf_counter() - t
    frames = num_frames(int(round(args.clip_seconds * SAMPLE_RATE))) // 16 * 16
    pt_frames = min(args.pretrain_frames or frames, unl.shape[-1] // 16 * 16)
    unl, n_silent = pretraining_windows(unl, pt_frames)
    # folds keep every frame of their clips, as `train finetune` computes them (the model uses whole patches)
    if args.norm_stats == "unlabeled":
        mean, std = bin_stats(unl)
        unl = (unl - mean[:, None]) / std[:, None]
        folds = {k: ((s - mean[:, None]) / std[:, None], y) for k, (s, y) in folds.items()}
    n_labeled = sum(int(y.numel()) for _, y in folds.values())
    print(f"unlabeled: {unlabeled_desc} -> {tuple(unl.shape)} windows"
          + (f" ({n_silent} silent windows dropped: digital silence or padding)" if n_silent else ""))
    print(f"labeled:   {labeled_desc} -> {n_labeled} clips, {len(class_names)} classes, folds {args.folds}")

    config = model_config(args, frames)
    torch.manual_seed(args.seed)
    model = Model(config, fused=True)  # the path `train pretrain` / `train finetune` resolve by default (--fused)
    random_model = Model(config, fused=True)
    random_model.load_state_dict(model.state_dict())  # the untouched initialization: the "random" baselines
    heldout = torch.cat([s for s, _ in folds.values()])[:64]
    loss_before = heldout_loss(model, heldout, args.mask_ratio, args.seed)
    n_enc = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("patch_embed", "blocks", "cls")))
    print(f"model: encoder {args.embed_dim}/{args.depth}/{args.heads} ({n_enc / 1e6:.2f}M params), decoder "
          f"{args.decoder_dim}/{args.decoder_depth}/{args.decoder_heads}, {config.num_patches} patches of "
          f"{config.grid_f}x{config.grid_t}; pre-training {args.pretrain_steps} steps x {args.pretrain_batch}")
    recipe = recipe_from_args(args)
    n_train = n_labeled - min(int(y.numel()) for _, y in folds.values())
    sched = recipes.resolve(recipe, n_train)
    print(f"fine-tuning recipe: {recipe}\n  -> for ~{n_train} training clips: {sched}")

    cache = Path(args.pretrained_cache) if args.pretrained_cache else None
    if cache is not None and (cache / "pretrain.json").is_file():
        import json

        model = Model.from_pretrained(cache)
        pt = json.loads((cache / "pretrain.json").read_text())
        print(f"loaded the pre-trained model from {cache} (pre-training skipped)")
    else:
        pt = pretrain(model, unl, args, log_every=max(1, args.pretrain_steps // 12))
        if cache is not None:
            model.save_pretrained(cache)
            write_json(str(cache / "pretrain.json"), pt)
    timings["pretrain_s"] = pt["seconds"]
    loss_after = heldout_loss(model, heldout, args.mask_ratio, args.seed)
    print(f"held-out masked loss (fixed masks, {heldout.shape[0]} labeled clips): random init {loss_before:.4f} -> "
          f"pre-trained {loss_after:.4f}")
    del unl

    recon = _reconstructions(model, heldout[:4], args, out)
    num_classes = len(class_names)
    settings = list(args.settings)
    t = time.perf_counter()
    ev = evaluate_folds_parallel({"pretrained": model, "random": random_model}, folds, num_classes, args, settings,
                                 args.test_folds, args.fold_workers)
    timings["folds_wall_s"] = time.perf_counter() - t
    timings.update({f"{s}_s": v for s, v in ev["seconds"].items()})
    sweep = None
    if args.probe_sweep:
        t = time.perf_counter()
        sweep = probe_sweep({"pretrained": model, "random": random_model}, folds, num_classes, args,
                            list(args.test_folds or sorted(folds)))
        timings["probe_sweep_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start

    test_folds = list(args.test_folds or sorted(folds))
    true = torch.cat([folds[k][1] for k in test_folds])
    summary, confusions = {}, {}
    for s in settings:
        v = [ev["accuracy"][s][k] for k in test_folds]
        cm = confusion(torch.cat([ev["predictions"][s][k] for k in test_folds]), true, num_classes)
        confusions[s] = cm
        per_class = (cm.diag().double() / cm.sum(1).clamp_min(1).double()).tolist()
        summary[s] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                      "per_fold": {str(k): ev["accuracy"][s][k] for k in test_folds},
                      "per_class": dict(zip(class_names, per_class)), "confusion": cm.tolist()}
        if s.startswith("finetune"):
            summary[s]["finetune_reports"] = {str(k): r for k, r in ev["reports"][s].items()}
    result = {
        "benchmark": "ssl_eval",
        "environment": environment(torch.device("cpu")),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "settings": {k: v for k, v in vars(args).items()},
        "recipe": {**vars(recipe).copy(), "resolved_for_train_clips": n_train, **{"schedule": vars(sched)}},
        "model_config": config.to_dict(),
        "encoder_params": n_enc,
        "data": {"unlabeled": unlabeled_desc, "labeled": labeled_desc, "labeled_clips": n_labeled,
                 "classes": class_names, "chance": 1.0 / num_classes, "frames": frames},
        "pretraining": {"curve": pt["curve"], "heldout_loss_random_init": loss_before,
                        "heldout_loss_pretrained": loss_after},
        "accuracy": summary,
        "paired_vs_finetune_pretrained": paired_differences(summary, "finetune_pretrained", settings),
        "probe_sweep": sweep,
        "timings_s": timings,
        "files": {"reconstructions": str(recon)},
    }
    result["files"]["plot"] = str(_plot(summary, result, out, settings, args.tag))
    result["files"]["confusion"] = str(_plot_confusion(confusions, class_names, out, args.tag))
    path = out / f"{args.tag}.json"
    write_json(str(path), result)
    _print_table(summary, timings, 1.0 / num_classes, settings, class_names)
    _print_paired(result["paired_vs_finetune_pretrained"], "finetune_pretrained")
    print(f"wrote {path}, {result['files']['plot']}, {result['files']['confusion']}, {recon}")
    return result


def _reconstructions(model: Model, specs: torch.Tensor, args, out: Path) -> Path:
    from maskspec_fast.viz import save_reconstructions

    g = torch.Generator().manual_seed(args.seed)
    noise = torch.rand(specs.shape[0], model.config.num_patches, generator=g)
    with torch.no_grad():
        _, pred, mask = model(specs, mask_ratio=args.mask_ratio, noise=noise)
    return save_reconstructions(specs, pred, mask, out / f"{args.tag}_reconstructions.png", model.config.patch_size,
                                model.config.norm_pix_loss,
                                f"held-out clips after {args.pretrain_steps} pre-training steps")


def _plot(summary: dict, result: dict, out: Path, settings: list[str], tag: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1.6, 1]})
    data = [list(summary[s]["per_fold"].values()) for s in settings]
    ax.boxplot(data, showmeans=True)
    for i, d in enumerate(data, 1):
        ax.scatter([i + 0.08 * (j - len(d) / 2) / max(1, len(d)) for j in range(len(d))], d, s=12, color="k",
                   zorder=3)
    ax.set_xticks(range(1, len(settings) + 1), [s.replace("_", "\n") for s in settings])
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
    path = out / f"{tag}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_confusion(confusions: dict[str, torch.Tensor], names: list[str], out: Path, tag: str) -> Path:
    """One row-normalized confusion matrix per setting (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(confusions)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.4), squeeze=False)
    for ax, (s, cm) in zip(axes[0], confusions.items()):
        norm = cm.double() / cm.sum(1, keepdim=True).clamp_min(1)
        ax.imshow(norm.numpy(), vmin=0, vmax=1, cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_title(f"{s}\nacc {float(cm.diag().sum() / cm.sum()):.3f}", fontsize=8)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0][0].set_ylabel("true", fontsize=7)
    fig.tight_layout()
    path = out / f"{tag}_confusion.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def paired_differences(summary: dict, of: str, settings: list[str]) -> dict[str, dict[str, Any]]:
    """Fold-paired comparison of setting ``of`` with every other setting: per-fold accuracy differences
    ``d_k = acc_of(k) - acc_other(k)``, their mean and std over folds, and the folds won / tied / lost. The folds
    differ far more in difficulty than the settings do, so the paired spread is the one to compare against."""
    out: dict[str, dict[str, Any]] = {}
    if of not in summary:
        return out
    for other in settings:
        if other == of or other not in summary:
            continue
        d = [summary[of]["per_fold"][k] - summary[other]["per_fold"][k] for k in summary[of]["per_fold"]]
        out[other] = {"mean": statistics.fmean(d), "std": statistics.stdev(d) if len(d) > 1 else 0.0,
                      "per_fold": d, "won": sum(x > 1e-9 for x in d), "tied": sum(abs(x) <= 1e-9 for x in d),
                      "lost": sum(x < -1e-9 for x in d)}
    return out


def _print_paired(paired: dict, of: str) -> None:
    if not paired:
        return
    print(f"\n{of} minus each other setting, paired by fold (mean +- std of the differences; folds won/tied/lost):")
    for other, p in paired.items():
        print(f"  - {other:<20} {p['mean']:+.3f} +- {p['std']:.3f}   {p['won']}/{p['tied']}/{p['lost']}   "
              + " ".join(f"{x:+.2f}" for x in p["per_fold"]))


def _print_table(summary: dict, timings: dict, chance: float, settings: list[str], names: list[str]) -> None:
    print(f"\n{'setting':<22}{'accuracy mean +- std':>22}{'per fold':>40}{'time (s)':>10}")
    for s in settings:
        folds = " ".join(f"{v:.2f}" for v in summary[s]["per_fold"].values())
        print(f"{s:<22}{summary[s]['mean']:>14.3f} +- {summary[s]['std']:.3f}{folds:>40}{timings[s + '_s']:>10.0f}")
    print(f"(chance {chance:.3f}; pre-training {timings['pretrain_s']:.0f} s, total {timings['total_s']:.0f} s)")
    print("\nper-class accuracy (pooled over the test folds):")
    print(f"{'class':<14}" + "".join(f"{s[:16]:>18}" for s in settings))
    for c in names:
        print(f"{c[:14]:<14}" + "".join(f"{summary[s]['per_class'][c]:>18.2f}" for s in settings))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if math.isnan(args.mask_ratio) or not 0 <= args.mask_ratio < 1:
        raise SystemExit("--mask-ratio must be in [0, 1)")
    return run(args)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up at once under nohup / pipes
    main()
