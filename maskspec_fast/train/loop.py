"""The training loop shared by pre-training and fine-tuning: data -> log-mel on the device -> step, with
warm-up + cosine lr, gradient accumulation, bf16/fp16 autocast (fp16 with a GradScaler), gradient clipping,
multi-process DDP (see :mod:`maskspec_fast.train.distributed`), checkpoints that resume exactly, the best
checkpoint by an evaluation metric, a progress bar, a CSV log and optional TensorBoard.

Randomness of a step is keyed by ``(seed, step)`` (why: a resumed run, a run with more processes and a run with
more DataLoader workers then draw the same numbers as the uninterrupted one-process run):

* stream 0, the same on every rank: the global RNG while the front end runs (mel-band jitter);
* stream 1, a ``torch.Generator``: the task's per-sample draws (mask noise, SpecAugment, mixup weights) for the
  whole global batch, each rank keeping its rows;
* stream ``2 + rank``: the global RNG while the model runs (drop path, patchout), different on every rank.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..frontend.logmel import LogMel
from .checkpoint import (
    latest_checkpoint,
    load_trainer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json_atomic,
)
from .distributed import DistInfo, all_gather_objects, barrier, broadcast_object, local_rows, wrap_ddp
from .inputs import DaliInput, TorchInput, make_loader, to_spec  # noqa: F401  (make_loader/to_spec re-exported)
from .sampler import ResumableSampler
from .schedule import make_adamw, scaled_lr, set_lr, warmup_cosine


class NonFiniteLoss(RuntimeError):
    pass


LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "audio_s_per_s", "elapsed_s",
              "skipped_bad", "nonfinite", "loss_scale"]


class CsvLog:
    """Append-only CSV with a fixed header (rows of a resumed run continue the same file).

    An existing file keeps its own header (a run started by an older version keeps its columns); ``keep_until``
    drops rows past a step first (a run resumed from step s re-does the steps after s, so their old rows go).
    """

    def __init__(self, path: Path, fields: list[str], keep_until: int | None = None):
        self.path = path
        if path.exists():
            with path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                old_fields, rows = list(reader.fieldnames or []), list(reader)
            if old_fields:
                fields = old_fields
                if keep_until is not None and any(_int(r.get("step")) > keep_until for r in rows):
                    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                    with tmp.open("w", newline="") as fh:
                        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
                        w.writeheader()
                        w.writerows(r for r in rows if _int(r.get("step")) <= keep_until)
                    os.replace(tmp, path)
        self.fields = fields
        new = not path.exists() or path.stat().st_size == 0
        self.fh = path.open("a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=fields, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def _int(x: Any) -> int:
    try:
        return int(x)
    except (TypeError, ValueError):
        return -1


class TensorBoard:
    """Optional TensorBoard scalars (``--tensorboard``); a no-op when disabled."""

    def __init__(self, out: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(f"--tensorboard needs the tensorboard package: pip install tensorboard ({e})") from e
            self.writer = SummaryWriter(str(out / "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for ``(seed, step, stream)`` (SeedSequence mixing: nearby inputs give unrelated seeds)."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(stream)]).generate_state(2, np.uint32)
    return (int(s[0]) << 31) ^ int(s[1])


def _quiet(*_a, **_k) -> None:
    pass


def train(
    task,
    dataset,
    args: argparse.Namespace,
    frontend: LogMel,
    device: torch.device,
    log: Callable[..., None] = print,
    dist_info: DistInfo | None = None,
    evaluate: Callable[[torch.nn.Module], tuple[str, float, dict]] | None = None,
) -> dict:
    """Run ``args.steps`` optimizer steps of ``task`` on ``dataset``; returns a summary dict (on every rank).

    ``args.batch_size`` is the GLOBAL batch (all ranks, all accumulation micro-batches of one optimizer step);
    each rank loads ``batch_size / world_size`` clips and runs them as ``accum_steps`` micro-batches.
    ``task.picture(spec, path)`` (if the task has one) is called every ``args.picture_every`` steps on a fixed
    batch, and training curves are drawn from the CSV log at the end. ``evaluate(model) -> (metric name, value
    (higher is better), details)`` runs every ``args.eval_every`` steps and at the end when given; the best value's
    model is kept in ``checkpoints/best`` and described in ``best.json``. Only rank 0 writes files and logs.
    """
    info = dist_info or DistInfo()
    main = info.is_main
    if not main:
        log = _quiet
    out = Path(args.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    barrier()
    model = task.model
    accum = max(1, int(getattr(args, "accum_steps", 1)))
    global_batch = int(args.batch_size)
    if global_batch % (info.world_size * accum):
        raise ValueError(f"--batch-size {global_batch} is the global batch; it must be divisible by "
                         f"processes x --accum-steps = {info.world_size} x {accum}")
    local_batch = global_batch // info.world_size
    peak_lr = args.lr if args.lr is not None else scaled_lr(args.blr, global_batch)
    optimizer = make_adamw(task.groups(args.weight_decay), lr=peak_lr, betas=(0.9, 0.95))
    precision = getattr(args, "precision", "fp32")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches_per_epoch = len(dataset) // global_batch
    if batches_per_epoch == 0:
        raise ValueError(f"dataset has {len(dataset)} clips, fewer than one batch of {global_batch}")
    inp = _make_input(task, dataset, args, frontend, device, info, local_batch, batches_per_epoch, log)
    step, epoch, batch_in_epoch, skipped_bad, nonfinite = 0, 0, 0, 0, 0
    best: dict[str, Any] | None = None

    resume = broadcast_object(_find_resume(getattr(args, "resume", None), out))  # every rank: rank 0's choice
    if resume is not None:
        state = load_trainer_state(resume)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(resume / "model.safetensors"), device=str(device)), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        skipped_bad, nonfinite = state.get("skipped_bad", 0), state.get("nonfinite", 0)
        best = state.get("best") or None
        old_batch = int(state.get("global_batch", global_batch))
        if old_batch != global_batch:  # keep the position in samples; a partial batch is re-drawn
            batch_in_epoch = batch_in_epoch * old_batch // global_batch
            log(f"warning: resuming with global batch {global_batch} instead of {old_batch}; epoch position rounded")
        ranks = state.get("rng_ranks")
        set_rng_state(ranks[info.rank] if ranks and len(ranks) == info.world_size else state["rng"])
        if state.get("frontend", "torch") != inp.name:
            log(f"warning: the checkpoint was made with --frontend {state.get('frontend', 'torch')}, resuming with "
                f"{inp.name}: the data order from here differs from an uninterrupted run")
        log(f"resumed from {resume} at step {step} (epoch {epoch}, batch {batch_in_epoch})")

    net = wrap_ddp(model, info, device)
    task.net = net
    csv_log = eval_log = tb = None
    if main:
        # a resumed run (or --resume auto that found nothing) redoes the steps after `step`: their old rows go
        keep_until = step if getattr(args, "resume", None) else None
        csv_log = CsvLog(out / "log.csv", LOG_FIELDS, keep_until=keep_until)
        if evaluate is not None:
            eval_log = CsvLog(out / "eval.csv", ["step", "metric", "value", "best"], keep_until=keep_until)
        tb = TensorBoard(out, getattr(args, "tensorboard", False))
    picture_every = getattr(args, "picture_every", 0) if hasattr(task, "picture") else 0
    eval_every = int(getattr(args, "eval_every", 0) or 0) if evaluate is not None else 0
    picture_spec = None
    clip_s = getattr(dataset, "clip_seconds", float("nan"))
    bar = tqdm(total=args.steps, initial=step, desc=task.name, unit="step", dynamic_ncols=True,
               disable=args.quiet or not main)
    t0, last_t, last_step = time.time(), time.time(), step
    losses: list[float] = []
    rows = local_rows(global_batch, info.rank, info.world_size)
    model.train()
    frontend.train(task.name == "pretrain")

    def save() -> None:
        _save(out, step, model, optimizer, scaler, epoch, batch_in_epoch, skipped_bad, nonfinite, best, args,
              inp.name, info, global_batch)

    patience = int(getattr(args, "patience", 0) or 0)
    stale = 0  # evaluations since the last improvement (early stopping after `patience` of them)

    def run_eval() -> None:
        nonlocal best, stale
        name, value, _ = evaluate(model)
        improved = value == value and (best is None or value > best["value"])
        stale = 0 if improved else stale + 1
        if improved:
            best = {"metric": name, "value": value, "step": step}
        if main:
            eval_log.write({"step": step, "metric": name, "value": f"{value:.6f}", "best": int(improved)})
            tb.scalars(step, {f"eval/{name}": value})
            log(f"step {step}: eval {name} = {value:.4f}" + (" (best so far)" if improved else ""))
        if improved:
            _save(out, step, model, optimizer, scaler, epoch, batch_in_epoch, skipped_bad, nonfinite, best, args,
                  inp.name, info, global_batch, name="best")
            if main:
                write_json_atomic(out / "best.json", {**best, "checkpoint": str(out / "checkpoints" / "best")})

    if eval_every and step == 0 and getattr(args, "eval_at_start", False):
        run_eval()  # the starting point competes too (LP-FT: the linear-probe head)
    while step < args.steps:
        for batch in inp.epoch(epoch, batch_in_epoch):
            bad = inp.replaced(batch)
            if bad:
                with (out / "bad_files.csv").open("a") as fh:
                    fh.writelines(f"{step},{p},{problem}\n" for p, problem in bad)
                for p, problem in bad:
                    tqdm.write(f"[rank {info.rank}] skipped bad file {p}: {problem} (replaced by another clip)")
            lr = warmup_cosine(step, args.steps, args.warmup_steps, peak_lr, args.min_lr)
            set_lr(optimizer, lr)
            torch.manual_seed(step_seed(args.seed, step, 0))  # front-end randomness: identical on every rank
            spec = inp.spec(batch)
            labels = batch["label"].to(device, non_blocking=True)
            gen = torch.Generator().manual_seed(step_seed(args.seed, step, 1))
            extras = task.draw(gen, global_batch, rows, spec) if hasattr(task, "draw") else {}
            torch.manual_seed(step_seed(args.seed, step, 2 + info.rank))  # model randomness: per rank
            if picture_every and picture_spec is None:
                picture_spec = spec[:4].detach().clone()  # a fixed batch to watch the reconstructions improve
            local_loss = _accumulated_step(task, spec, labels, extras, accum, device, precision, scaler)
            # one all-reduce for the loss and the bad-file count; a NaN on any rank reaches all ranks
            loss, bad_total = _reduce_pair(local_loss, len(bad), device)
            skipped_bad += int(round(bad_total))
            if not math.isfinite(loss):
                nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
                if not args.skip_nonfinite:
                    last = latest_checkpoint(out)
                    raise NonFiniteLoss(
                        f"non-finite loss ({loss}) at step {step}; last good checkpoint: {last or 'none'} "
                        "(resume from it with --resume auto; use --skip-nonfinite to skip such steps)"
                    )
                batch_in_epoch += 1
                log(f"warning: non-finite loss at step {step} skipped ({nonfinite} so far)")
                continue
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad or float("inf"))
            scaler.step(optimizer)  # skips the update when fp16 gradients overflowed
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batch_in_epoch += 1
            losses.append(loss)
            if main and (step % args.log_every == 0 or step == args.steps):
                now = time.time()
                sps = (step - last_step) * global_batch / max(now - last_t, 1e-9)
                last_t, last_step = now, step
                gn = float(grad_norm)
                row = dict(step=step, epoch=epoch, loss=f"{loss:.6f}", lr=f"{lr:.3e}", grad_norm=f"{gn:.4f}",
                           samples_per_s=f"{sps:.2f}", audio_s_per_s=f"{sps * clip_s:.1f}",
                           elapsed_s=f"{now - t0:.1f}", skipped_bad=skipped_bad, nonfinite=nonfinite,
                           loss_scale=f"{scaler.get_scale():.0f}" if scaler.is_enabled() else "")
                csv_log.write(row)
                tb.scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": gn,
                                  "train/samples_per_s": sps, "train/nonfinite": nonfinite})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")
            bar.update(1)
            if main and picture_every and (step % picture_every == 0 or step == args.steps):
                task.picture(picture_spec, out / "pictures" / f"reconstruction_step_{step:08d}.png", f"step {step}")
            if eval_every and (step % eval_every == 0 or step == args.steps):
                run_eval()
                if patience and stale >= patience:
                    log(f"early stop at step {step}: no better {best['metric'] if best else 'metric'} in "
                        f"{stale} evaluations (best at step {best['step'] if best else '-'})")
                    break
            if args.save_every and step % args.save_every == 0 and step < args.steps:
                save()
            if step >= args.steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        break
    bar.close()
    if main:
        csv_log.close()
        if eval_log is not None:
            eval_log.close()
        tb.close()
        try:
            from ..viz import save_curves

            save_curves(out / "log.csv", out / "curves.png")
        except (ImportError, ValueError, OSError, KeyError) as e:  # pictures are a convenience, never a failure
            log(f"note: training curves not drawn ({e})")
    save()
    final = out / "final"
    if main:
        model.save_pretrained(final)
    barrier()
    if skipped_bad:
        log(f"warning: {skipped_bad} bad audio file(s) were replaced during training (listed in {out / 'bad_files.csv'})")
    if nonfinite:
        log(f"warning: {nonfinite} step(s) with a non-finite loss were skipped (column 'nonfinite' of log.csv)")
    return {"steps": step, "final": str(final), "losses": losses, "skipped_bad": skipped_bad, "nonfinite": nonfinite,
            "seconds": time.time() - t0, "world_size": info.world_size, "global_batch": global_batch,
            "frontend": inp.name, "best": best}


def _make_input(task, dataset, args, frontend, device, info, local_batch, batches_per_epoch, log):
    from .inputs import choose_frontend

    name, why = choose_frontend(getattr(args, "frontend", "torch") or "torch", dataset)
    log(f"front end: {name} ({why})")
    weights = None
    if getattr(args, "balanced_sampling", False):
        if not hasattr(dataset, "sample_weights"):
            raise ValueError(f"--balanced-sampling: {type(dataset).__name__} has no sample_weights()")
        if name == "dali":
            raise ValueError("--balanced-sampling is supported with --frontend torch only (DALI reads each "
                             "file once per epoch in its own order)")
        weights = dataset.sample_weights()
    if name == "dali":
        jitter = task.name == "pretrain"
        return DaliInput(dataset, local_batch, batches_per_epoch, seed=args.seed, rank=info.rank,
                         world_size=info.world_size, device=device, skip_bad_files=args.skip_bad_files,
                         workers=args.workers, fmin_jitter=frontend.fmin_jitter if jitter else 0.0,
                         fmax_jitter=frontend.fmax_jitter if jitter else 0.0)
    return TorchInput(dataset, frontend, local_batch, batches_per_epoch, workers=args.workers, seed=args.seed,
                      rank=info.rank, world_size=info.world_size, device=device, weights=weights)


def _reduce_pair(a: float, b: float, device: torch.device) -> tuple[float, float]:
    from .distributed import active

    if not active():
        return a, b
    import torch.distributed as dist

    t = torch.tensor([a, b], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t[0]) / dist.get_world_size(), float(t[1])


def _accumulated_step(task, spec, labels, extras: dict, accum: int, device: torch.device, precision: str,
                      scaler: torch.amp.GradScaler | None = None) -> float:
    """Forward/backward over ``accum`` equal micro-batches of this rank's batch; returns the mean loss.

    Under DDP the gradient all-reduce runs only with the last micro-batch (``no_sync`` before it).
    """
    net = getattr(task, "net", task.model)
    sync_later = getattr(net, "no_sync", None)
    n = spec.shape[0]
    if n % accum:
        raise ValueError(f"local batch {n} is not divisible by --accum-steps {accum}")
    m = n // accum
    total = torch.zeros((), device=spec.device, dtype=torch.float32)
    for k in range(accum):
        sl = slice(k * m, (k + 1) * m)
        ctx = sync_later() if sync_later is not None and k < accum - 1 else contextlib.nullcontext()
        with ctx:
            with _autocast(device, precision):
                loss = task.loss(spec[sl], labels[sl], **{key: v[sl] for key, v in extras.items()})
            scaled = loss / accum
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total = total + loss.detach().float() / accum
    return float(total)  # one device sync per step


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _save(out, step, model, optimizer, scaler, epoch, batch_in_epoch, skipped_bad, nonfinite, best, args,
          frontend_name, info: DistInfo, global_batch, name: str | None = None):
    """Collective: every rank's RNG state is gathered, rank 0 writes, all wait (barrier) until it is on disk."""
    rngs = all_gather_objects(rng_state())
    if info.is_main:
        state = {"optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                 "skipped_bad": skipped_bad, "nonfinite": nonfinite, "rng": rngs[0], "rng_ranks": rngs,
                 "scaler": scaler.state_dict() if scaler.is_enabled() else {}, "best": best or {},
                 "world_size": info.world_size, "global_batch": global_batch, "frontend": frontend_name}
        save_checkpoint(out, step, model, state, keep=args.keep, name=name)
    barrier()


def _find_resume(resume: str | None, out: Path) -> Path | None:
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(out)
    p = Path(resume)
    if not p.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    return p


@torch.no_grad()
def predict(model, dataset, args, frontend: LogMel, device: torch.device,
            dist_info: DistInfo | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a whole dataset, in dataset order (nothing dropped).

    Multi-process: each rank predicts every w-th clip and the results are gathered (the padding that evens the
    ranks out is dropped), so every rank returns the same full tensors.
    """
    from ..data import collate

    info = dist_info or DistInfo()
    was_training, fe_training = model.training, frontend.training
    model.eval()
    frontend.eval()
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size)
    batch = max(1, args.batch_size // info.world_size)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=args.workers,
                        collate_fn=collate, drop_last=False)
    outs, labels = [], []
    for b in tqdm(loader, desc="eval", unit="batch", disable=args.quiet or not info.is_main, dynamic_ncols=True):
        spec = to_spec(frontend, b["wave"], device)
        with _autocast(device, args.precision):
            outs.append(model(spec).float().cpu())
        labels.append(b["label"])
    model.train(was_training)
    frontend.train(fe_training)
    # positions from the sampler, not b["index"]: a replaced bad file reports its replacement's index
    logits, labels_t, index_t = torch.cat(outs), torch.cat(labels), torch.tensor(sampler.indices(), dtype=torch.long)
    if info.world_size > 1:
        parts = all_gather_objects((logits, labels_t, index_t))
        logits = torch.cat([p[0] for p in parts])
        labels_t = torch.cat([p[1] for p in parts])
        index_t = torch.cat([p[2] for p in parts])
    order = torch.full((len(dataset),), -1, dtype=torch.long)
    order[index_t] = torch.arange(len(index_t))  # a padded duplicate overwrites its own equal copy
    return logits[order], labels_t[order]
