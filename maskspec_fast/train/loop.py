"""The training loop shared by pre-training and fine-tuning: data -> log-mel on the device -> step, with
warm-up + cosine lr, gradient clipping, checkpoints that resume, a progress bar and a CSV log."""
from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..frontend.logmel import LogMel
from .checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from .sampler import ResumableSampler
from .schedule import scaled_lr, set_lr, warmup_cosine


class NonFiniteLoss(RuntimeError):
    pass


class CsvLog:
    """Append-only CSV with a fixed header (rows of a resumed run continue the same file)."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = path, fields
        new = not path.exists()
        self.fh = path.open("a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=fields, extrasaction="ignore")
        if new:
            self.writer.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def make_loader(dataset, sampler: ResumableSampler, batch_size: int, workers: int, seed: int, epoch: int):
    from ..data import collate

    g = torch.Generator().manual_seed(seed * 1000003 + epoch)  # worker seeds depend on (seed, epoch) only
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        generator=g,
        persistent_workers=False,
    )


def to_spec(frontend: LogMel, wave: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Waveform batch ``(B, N)`` -> log-mel ``(B, 128, T)`` on the training device."""
    return frontend(wave.to(device, non_blocking=True))


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


def train(task, dataset, args: argparse.Namespace, frontend: LogMel, device: torch.device, log=print) -> dict:
    """Run ``args.steps`` optimizer steps of ``task`` on ``dataset``; returns a summary dict.

    ``task.picture(spec, path)`` (if the task has one) is called every ``args.picture_every`` steps on a fixed
    batch, and training curves are drawn from the CSV log at the end.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = task.model
    global_batch = args.batch_size * args.accum_steps
    peak_lr = args.lr if args.lr is not None else scaled_lr(args.blr, global_batch)
    optimizer = torch.optim.AdamW(task.groups(args.weight_decay), lr=peak_lr, betas=(0.9, 0.95))
    sampler = ResumableSampler(len(dataset), seed=args.seed, shuffle=True)
    batches_per_epoch = len(dataset) // args.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"dataset has {len(dataset)} clips, fewer than one batch of {args.batch_size}")
    step, epoch, batch_in_epoch, skipped_bad, nonfinite = 0, 0, 0, 0, 0

    resume = _find_resume(args.resume, out)
    if resume is not None:
        state = load_trainer_state(resume)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(resume / "model.safetensors")), strict=True)
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        skipped_bad, nonfinite = state.get("skipped_bad", 0), state.get("nonfinite", 0)
        set_rng_state(state["rng"])
        log(f"resumed from {resume} at step {step} (epoch {epoch}, batch {batch_in_epoch})")

    fields = ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "audio_s_per_s", "elapsed_s", "skipped_bad"]
    csv_log = CsvLog(out / "log.csv", fields)
    tb = TensorBoard(out, getattr(args, "tensorboard", False))
    picture_every = getattr(args, "picture_every", 0) if hasattr(task, "picture") else 0
    picture_spec = None
    clip_s = getattr(dataset, "clip_seconds", float("nan"))
    bar = tqdm(total=args.steps, initial=step, desc=task.name, unit="step", dynamic_ncols=True, disable=args.quiet)
    t0, last_t, last_step = time.time(), time.time(), step
    losses: list[float] = []
    model.train()
    frontend.train(task.name == "pretrain")
    while step < args.steps:
        sampler.set_epoch(epoch, skip=batch_in_epoch * args.batch_size)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # fresh random crops per epoch, independent of the worker count
        loader = make_loader(dataset, sampler, args.batch_size, args.workers, args.seed, epoch)
        for batch in loader:
            for bad_path, problem in batch.get("replaced", []):
                skipped_bad += 1
                with (out / "bad_files.csv").open("a") as fh:
                    fh.write(f"{step},{bad_path},{problem}\n")
                bar.write(f"skipped bad file {bad_path}: {problem} (replaced by another clip)")
            lr = warmup_cosine(step, args.steps, args.warmup_steps, peak_lr, args.min_lr)
            set_lr(optimizer, lr)
            spec = to_spec(frontend, batch["wave"], device)
            labels = batch["label"].to(device)
            if picture_every and picture_spec is None:
                picture_spec = spec[:4].detach().clone()  # a fixed batch to watch the reconstructions improve
            loss = _accumulated_step(task, spec, labels, args.accum_steps, device, args.precision)
            if not math.isfinite(loss):
                nonfinite += 1
                optimizer.zero_grad(set_to_none=True)
                if not args.skip_nonfinite:
                    last = latest_checkpoint(out)
                    raise NonFiniteLoss(
                        f"non-finite loss ({loss}) at step {step}; last good checkpoint: {last or 'none'} "
                        "(use --skip-nonfinite to skip such steps)"
                    )
                batch_in_epoch += 1
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            batch_in_epoch += 1
            losses.append(loss)
            if step % args.log_every == 0 or step == args.steps:
                now = time.time()
                sps = (step - last_step) * global_batch / max(now - last_t, 1e-9)
                last_t, last_step = now, step
                row = dict(step=step, epoch=epoch, loss=f"{loss:.6f}", lr=f"{lr:.3e}", grad_norm=f"{float(grad_norm):.4f}",
                           samples_per_s=f"{sps:.2f}", audio_s_per_s=f"{sps * clip_s:.1f}",
                           elapsed_s=f"{now - t0:.1f}", skipped_bad=skipped_bad)
                csv_log.write(row)
                tb.scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                                  "train/samples_per_s": sps})
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")
            bar.update(1)
            if picture_every and (step % picture_every == 0 or step == args.steps):
                task.picture(picture_spec, out / "pictures" / f"reconstruction_step_{step:08d}.png", f"step {step}")
            if args.save_every and step % args.save_every == 0 and step < args.steps:
                _save(out, step, model, optimizer, epoch, batch_in_epoch, skipped_bad, nonfinite, args.keep)
            if step >= args.steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
            continue
        break
    bar.close()
    csv_log.close()
    tb.close()
    try:
        from ..viz import save_curves

        save_curves(out / "log.csv", out / "curves.png")
    except (ImportError, ValueError, OSError, KeyError) as e:  # pictures are a convenience, never a failure
        log(f"note: training curves not drawn ({e})")
    _save(out, step, model, optimizer, epoch, batch_in_epoch, skipped_bad, nonfinite, args.keep)
    final = out / "final"
    model.save_pretrained(final)
    if skipped_bad:
        log(f"warning: {skipped_bad} bad audio file(s) were replaced during training (listed in {out / 'bad_files.csv'})")
    return {"steps": step, "final": str(final), "losses": losses, "skipped_bad": skipped_bad, "nonfinite": nonfinite,
            "seconds": time.time() - t0}


def _accumulated_step(task, spec, labels, accum: int, device: torch.device, precision: str) -> float:
    """Forward/backward over ``accum`` micro-batches of one batch; returns the mean loss."""
    total = 0.0
    for s, y in zip(spec.chunk(accum), labels.chunk(accum)):
        with _autocast(device, precision):
            loss = task.loss(s, y)
        (loss / accum).backward()
        total += loss.item() / accum
    return total


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _save(out, step, model, optimizer, epoch, batch_in_epoch, skipped_bad, nonfinite, keep):
    state = {"optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
             "skipped_bad": skipped_bad, "nonfinite": nonfinite, "rng": rng_state()}
    return save_checkpoint(out, step, model, state, keep=keep)


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
def predict(model, dataset, args, frontend: LogMel, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over a whole dataset (deterministic order, no sample dropped)."""
    from ..data import collate

    model.eval()
    frontend.eval()
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate, drop_last=False)
    outs, labels = [], []
    for batch in tqdm(loader, desc="eval", unit="batch", disable=args.quiet, dynamic_ncols=True):
        spec = to_spec(frontend, batch["wave"], device)
        with _autocast(device, args.precision):
            outs.append(model(spec).float().cpu())
        labels.append(batch["label"])
    model.train()
    return torch.cat(outs), torch.cat(labels)
