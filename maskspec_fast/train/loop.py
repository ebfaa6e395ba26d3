"""The trainer shared by pre-training and fine-tuning: data -> log-mel on the device -> step, with warm-up +
cosine lr, gradient accumulation, bf16/fp16 autocast (fp16 with a GradScaler), gradient clipping, multi-process
DDP (see :mod:`maskspec_fast.train.distributed`), checkpoints that resume exactly, the best checkpoint by an
evaluation metric, a progress bar, a CSV log and optional TensorBoard.

Randomness of a step is keyed by ``(seed, step)`` (why: a resumed run, a run with more processes and a run with
more DataLoader workers then draw the same numbers as the uninterrupted one-process run):

* stream 0, the same on every rank: the global RNG while the front end runs (mel-band jitter);
* stream 1, a ``torch.Generator``: the task's per-sample draws (mask noise, SpecAugment, mixup weights) for the
  whole global batch, each rank keeping its rows;
* stream ``2 + rank``: the global RNG while the model runs (drop path, patchout), different on every rank.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from ..backends import compile_module
from ..data.interfaces import Source
from ..frontend.logmel import LogMel
from .checkpoint import last_good_checkpoint, list_checkpoints, write_json_atomic
from .config import TrainConfig
from .distributed import DistInfo, active, barrier, broadcast_object, local_rows, wrap_ddp
from .divergence import MARKER, Verdict, judge, mark, stop_advice
from .evaluation import Evaluator, autocast
from .inputs import make_input
from .logs import EVAL_FIELDS, LOG_FIELDS, CsvLog, TensorBoard, append_bad_files
from .recipe import BestTracker
from .schedule import make_adamw, set_lr, warmup_cosine
from .state import NonFiniteLoss, TrainerState, restore_training, save_training
from .tasks import Task


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for ``(seed, step, stream)`` (SeedSequence mixing: nearby inputs give unrelated seeds)."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), int(stream)]).generate_state(2, np.uint32)
    return (int(s[0]) << 31) ^ int(s[1])


def _quiet(*_a, **_k) -> None:
    pass


class Trainer:
    """One run of ``config.steps`` optimizer steps of ``task`` on ``dataset``.

    ``config.batch_size`` is the GLOBAL batch (all ranks, all accumulation micro-batches of one optimizer step);
    each rank loads ``batch_size / world_size`` clips and runs them as ``accum_steps`` micro-batches.
    ``evaluate(model) -> (metric name, value (higher is better), details)`` runs every ``config.eval_every``
    steps and at the end when given; the best model (:class:`~maskspec_fast.train.recipe.BestTracker`: higher value,
    on a tie lower ``details["loss"]``) is kept in ``checkpoints/best`` and described in ``best.json``. Only rank 0 writes files and logs.
    """

    def __init__(
        self,
        task: Task,
        dataset: Source,
        config: TrainConfig,
        frontend: LogMel,
        device: torch.device,
        log: Callable[..., None] = print,
        dist_info: DistInfo | None = None,
        evaluate: Evaluator | None = None,
        settings: dict[str, Any] | None = None,
    ):
        self.task, self.dataset, self.config, self.frontend, self.device = task, dataset, config, frontend, device
        self.settings = settings or {}
        self.info = info = dist_info or DistInfo()
        self.log = log if info.is_main else _quiet
        self.evaluate = evaluate
        self.out = Path(config.out)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier()
        self.global_batch = gb = config.batch_size
        if gb % (info.world_size * config.accum_steps):
            raise ValueError(f"--batch-size {gb} is the global batch; it must be divisible by "
                             f"processes x --accum-steps = {info.world_size} x {config.accum_steps}")
        self.batches_per_epoch = len(dataset) // gb
        if self.batches_per_epoch == 0:
            raise ValueError(f"dataset has {len(dataset)} clips, fewer than one batch of {gb}")
        self.model = task.model
        self.peak_lr = config.peak_lr()
        self.optimizer = make_adamw(task.groups(config.weight_decay), lr=self.peak_lr, betas=config.betas)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.input = make_input(task.name, dataset, config, frontend, device, info, gb // info.world_size,
                                self.batches_per_epoch, self.log)
        self.state = TrainerState(global_batch=gb, frontend=self.input.name, world_size=info.world_size)
        self._resume()
        if config.compile:  # in place, before DDP wraps it: parameter names and checkpoints stay plain
            compile_module(self.model, config.compile_backend)
            self.log("torch.compile: the model is compiled at its first step (the time is reported after it)")
        self.net = wrap_ddp(self.model, info, device)
        self.rows = local_rows(gb, info.rank, info.world_size)
        self.losses: list[float] = []
        self.first_step_s: float | None = None  # wall time of this run's first step (includes compiling)
        self.loss_at: dict[int, float] = {}  # log row step -> loss (this run's steps, and log.csv's before them)
        self.evals: list[dict[str, Any]] = []  # this run's evaluations (a resumed run: those after the resume)

    # --- resume and save ------------------------------------------------------------------------------------------
    def _resume(self) -> None:
        path: Path | Exception | None = None
        if self.info.is_main:  # rank 0 chooses (reading the candidates once); a refusal reaches every rank
            try:
                path = _find_resume(self.config.resume, self.out, self.log)
            except (ValueError, FileNotFoundError) as e:
                path = e
        path = broadcast_object(path)
        if isinstance(path, Exception):
            raise path
        if path is None:
            return
        st = restore_training(path, self.model, self.optimizer, self.scaler, self.info, self.device, self.log)
        if st.global_batch and st.global_batch != self.global_batch:  # keep the position in samples
            st.batch_in_epoch = st.batch_in_epoch * st.global_batch // self.global_batch
            self.log(f"warning: resuming with global batch {self.global_batch} instead of {st.global_batch}; "
                     "epoch position rounded")
        if st.frontend != self.input.name:
            self.log(f"warning: the checkpoint was made with --frontend {st.frontend}, resuming with "
                     f"{self.input.name}: the data order from here differs from an uninterrupted run")
        st.global_batch, st.frontend, st.world_size = self.global_batch, self.input.name, self.info.world_size
        if (path / MARKER).is_file():  # asked for explicitly (auto passes over it): allowed, but said
            self.log(f"warning: resuming from {path}, which a stopped run rejected "
                     f"({(path / MARKER).read_text().strip()})")
        self.state = st
        self.log(f"resumed from {path} at step {st.step} (epoch {st.epoch}, batch {st.batch_in_epoch})")

    def save(self, name: str | None = None) -> None:
        protect = None
        if name is None and self.info.is_main:  # keep pruning off the newest checkpoint a stop could advise
            good = [v for v in self._verdicts() if v.good]
            protect = good[-1].path if good else None
        save_training(self.out, self.state, self.model, self.optimizer, self.scaler, self.info, self.config.keep,
                      name=name, protect=protect)

    def _verdicts(self, failing_loss: float | None = None) -> list[Verdict]:
        """The divergence rule's verdicts on the step checkpoints in ``out`` (:mod:`.divergence`); with
        ``failing_loss``, the step after ``state.step`` failed with that loss."""
        losses = dict(self.loss_at)
        failing = None
        if failing_loss is not None:
            failing = self.state.step
            losses[failing + 1] = failing_loss
        return judge(list_checkpoints(self.out), losses, self.state.start_loss, failing)

    def _stop_note(self, failing_loss: float) -> str:
        """Where a non-finite stop can continue from (one line); rank 0 marks the rejected checkpoints."""
        verdicts = self._verdicts(failing_loss)
        if self.info.is_main:
            mark(verdicts)
        return stop_advice(verdicts, self.out, self.state.start_loss, self.peak_lr)

    # --- one step -------------------------------------------------------------------------------------------------
    def _forward_backward(self, spec: torch.Tensor, labels: torch.Tensor, extras: dict) -> torch.Tensor:
        """Forward/backward over ``accum_steps`` equal micro-batches of this rank's batch; the mean loss (a 0-d
        float32 tensor on the device, not synchronized).

        Under DDP the gradient all-reduce runs only with the last micro-batch (``no_sync`` before it).
        """
        accum = self.config.accum_steps
        sync_later = getattr(self.net, "no_sync", None)
        n = spec.shape[0]
        if n % accum:
            raise ValueError(f"local batch {n} is not divisible by --accum-steps {accum}")
        m = n // accum
        total = torch.zeros((), device=spec.device, dtype=torch.float32)
        for k in range(accum):
            sl = slice(k * m, (k + 1) * m)
            ctx = sync_later() if sync_later is not None and k < accum - 1 else contextlib.nullcontext()
            with ctx:
                with autocast(self.device, self.config.precision):
                    loss = self.task.loss(self.net, spec[sl], labels[sl], **{key: v[sl] for key, v in extras.items()})
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler.is_enabled() else scaled).backward()
            total = total + loss.detach().float() / accum
        return total

    def _skip_nonfinite(self, what: str, loss: float) -> None:
        """The non-finite rule, after a step whose loss (``loss``) or gradient norm (``what``) was NaN/Inf and whose
        update was NOT applied: stop naming the checkpoint to continue from (:mod:`.divergence`), or with
        ``skip_nonfinite`` skip the batch, up to ``max_nonfinite_skips`` consecutive skips.

        The step is named as ``log.csv`` numbers it: the step that would have been row ``state.step + 1``."""
        cfg, st = self.config, self.state
        st.nonfinite += 1
        st.nonfinite_run += 1
        self.optimizer.zero_grad(set_to_none=True)
        step = st.step + 1
        if not cfg.skip_nonfinite:
            raise NonFiniteLoss(f"{what} at step {step}; {self._stop_note(loss)}; the update was not "
                                "applied (--skip-nonfinite skips such steps)")
        if st.nonfinite_run > cfg.max_nonfinite_skips:
            raise NonFiniteLoss(f"{what} at step {step}: {st.nonfinite_run} consecutive non-finite steps, more "
                                f"than --max-nonfinite-skips {cfg.max_nonfinite_skips}; {self._stop_note(loss)}")
        st.advance_batch()
        self.log(f"warning: {what} at step {step}, update skipped ({st.nonfinite} so far, "
                 f"{st.nonfinite_run} in a row)")

    def _step(self, batch: dict[str, Any]) -> tuple[float, float, float] | None:
        """One optimizer step on ``batch``: ``(loss, lr, grad_norm)``, or None when a non-finite loss was skipped."""
        cfg, st = self.config, self.state
        bad = self.input.replaced(batch)
        self._watch_padding(batch)
        if bad:
            append_bad_files(self.out / "bad_files.csv", st.step, bad)
            for p, problem in bad:
                tqdm.write(f"[rank {self.info.rank}] skipped bad file {p}: {problem} (replaced by another clip)")
        lr = warmup_cosine(st.step, cfg.steps, cfg.warmup_steps, self.peak_lr, cfg.min_lr)
        set_lr(self.optimizer, lr)
        torch.manual_seed(step_seed(cfg.seed, st.step, 0))  # front-end randomness: identical on every rank
        spec = self.input.spec(batch)
        labels = batch["label"].to(self.device, non_blocking=True)
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, st.step, 1))
        extras = self.task.draw(gen, self.global_batch, self.rows, spec)
        torch.manual_seed(step_seed(cfg.seed, st.step, 2 + self.info.rank))  # model randomness: per rank
        if self.picture_spec is None and self.picture_every:
            self.picture_spec = spec[:4].detach().clone()  # a fixed batch to watch the reconstructions improve
        local_loss = self._forward_backward(spec, labels, extras)
        self.scaler.unscale_(self.optimizer)  # measure and clip the true gradients, not the scaled ones
        # the total norm before clipping: NaN/Inf when any gradient is (clipping would not make it finite)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad or float("inf"))
        # The non-finite rule, before any update: a NaN/Inf loss or gradient norm is never applied. Under fp16 an
        # overflowing gradient is the grad scaler's business (it skips that update and lowers the scale), so
        # only the loss counts there. One all-reduce carries the loss, the bad-file count and this rank's verdict:
        # every rank decides the same.
        grad_bad = torch.zeros((), device=grad_norm.device) if self.scaler.is_enabled() else \
            (~torch.isfinite(grad_norm)).float()
        loss, bad_total, grad_nonfinite, grad_norm = _reduce_step(local_loss, len(bad), grad_bad, grad_norm)
        st.skipped_bad += int(round(bad_total))
        if not math.isfinite(loss) or grad_nonfinite:
            if self.scaler.is_enabled():
                self.scaler.update()  # close the scaler's iteration (unscale_ ran); NaN gradients lower the scale
            what = f"non-finite loss ({loss})" if not math.isfinite(loss) else \
                f"non-finite gradient norm ({grad_norm}, loss {loss:.4g})"
            self._skip_nonfinite(what, loss)
            return None
        self.scaler.step(self.optimizer)  # skips the update when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        st.nonfinite_run = 0
        st.advance_batch()
        self.losses.append(loss)
        self.loss_at[st.step] = loss
        st.loss = loss
        if st.start_loss is None:
            st.start_loss = loss
        return loss, lr, grad_norm

    # fraction of the audio drawn in the first batches that was zero padding, above which the run says so once
    PADDING_WARN = 0.25
    PADDING_BATCHES = 8

    def _watch_padding(self, batch: dict[str, Any]) -> None:
        """Say once when files are much shorter than the clip: zero padding is silence the model learns from
        (2-3 s clips at the 10-s default are 70-80 % padding). Measured over the first :attr:`PADDING_BATCHES`
        batches this process reads (``batch["padded"]``: zeros appended per clip; inputs that do not report it,
        DALI's, are not watched)."""
        if self._padding is None or "padded" not in batch:
            return
        padded, total, seen = self._padding
        padded += int(batch["padded"].sum())
        total += int(batch["padded"].numel()) * round(self.dataset.clip_seconds * self.dataset.sample_rate)
        seen += 1
        self._padding = (padded, total, seen)
        if seen < self.PADDING_BATCHES and padded / max(total, 1) <= self.PADDING_WARN:
            return
        self._padding = None  # decided: said at most once per run
        if padded / max(total, 1) > self.PADDING_WARN:
            self.log(f"warning: {100 * padded / total:.0f} % of the audio in the first {seen} batch(es) is zero "
                     f"padding: the files are shorter than the {self.dataset.clip_seconds:g}-s clip (set "
                     "--clip-seconds to about your files' length)")

    # --- what happens between steps -------------------------------------------------------------------------------
    def _log_row(self, loss: float, lr: float, grad_norm: float) -> None:
        st, now = self.state, time.time()
        sps = (st.step - self._last_step) * self.global_batch / max(now - self._last_t, 1e-9)
        self._last_t, self._last_step = now, st.step
        clip_s = self.dataset.clip_seconds
        self.csv_log.write(dict(
            step=st.step, epoch=st.epoch, loss=f"{loss:.6f}", lr=f"{lr:.3e}", grad_norm=f"{grad_norm:.4f}",
            samples_per_s=f"{sps:.2f}", audio_s_per_s=f"{sps * clip_s:.1f}", elapsed_s=f"{now - self._t0:.1f}",
            skipped_bad=st.skipped_bad, nonfinite=st.nonfinite,
            loss_scale=f"{self.scaler.get_scale():.0f}" if self.scaler.is_enabled() else ""))
        self.tb.scalars(st.step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                                  "train/samples_per_s": sps, "train/nonfinite": st.nonfinite})
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", sps=f"{sps:.1f}")

    def _run_eval(self) -> None:
        st = self.state
        name, value, details = self.evaluate(self.model)
        loss = float(details.get("loss", 0.0))
        if details.get("omitted") and self.info.is_main:  # left out of the score, never replaced: say which
            left = [(path, f"{why} (left out of evaluation)") for path, why in details["bad_files"]]
            append_bad_files(self.out / "bad_files.csv", st.step, left)
            self.log(f"step {st.step}: evaluation left out {len(left)} bad file(s), scored {details['clips']} "
                     f"clips (listed in {self.out / 'bad_files.csv'})")
        if value == value:  # the recipe's rule: higher metric, on a tie lower evaluation loss
            improved = self._tracker.update(st.step, value, loss)
        else:  # a NaN metric never improves
            improved, self._tracker.bad = False, self._tracker.bad + 1
        if improved:
            st.best = {"metric": name, "value": value, "step": st.step, "loss": loss}
        self.evals.append({"step": st.step, "metric": name, "value": value, "loss": loss, "best": improved})
        if self.info.is_main:
            self.eval_log.write({"step": st.step, "metric": name, "value": f"{value:.6f}", "loss": f"{loss:.6f}",
                                 "best": int(improved)})
            self.tb.scalars(st.step, {f"eval/{name}": value})
            self.log(f"step {st.step}: eval {name} = {value:.4f}" + (" (best so far)" if improved else ""))
        if improved:
            self.save(name="best")
            if self.info.is_main:
                write_json_atomic(self.out / "best.json", {**st.best, "checkpoint": str(self.out / "checkpoints" / "best")})

    def _stop_early(self) -> bool:
        """After ``config.patience`` evaluations in a row without improvement (logged once)."""
        if not self._tracker.should_stop:
            return False
        best = self.state.best
        self.log(f"early stop at step {self.state.step}: no better {best['metric'] if best else 'metric'} in "
                 f"{self._tracker.bad} evaluations (best at step {best['step'] if best else '-'})")
        return True

    def _after_step(self, result: tuple[float, float, float]) -> bool:
        """Log, picture, evaluate and save after a step; True when training should stop early."""
        cfg, step, main = self.config, self.state.step, self.info.is_main
        last = step == cfg.steps
        if main and (step % cfg.log_every == 0 or last):
            self._log_row(*result)
        self.bar.update(1)
        if main and self.picture_every and (step % self.picture_every == 0 or last):
            self.task.picture(self.picture_spec, self.out / "pictures" / f"reconstruction_step_{step:08d}.png",
                              f"step {step}")
        if self.eval_every and (step % self.eval_every == 0 or last):
            self._run_eval()
            if self._stop_early():
                return True
        if cfg.save_every and step % cfg.save_every == 0 and not last:
            self.save()
        return False

    # --- the run --------------------------------------------------------------------------------------------------
    def _open_outputs(self) -> None:
        cfg, main = self.config, self.info.is_main
        self.csv_log = self.eval_log = None
        self.tb = TensorBoard(self.out, cfg.tensorboard and main)
        if main:
            # a run redoes the steps after `step` (a resumed one, or one started again in the same folder, e.g. with
            # a lower lr after a blow-up): their old rows go, so the log is this run's
            keep_until = self.state.step
            self.csv_log = CsvLog(self.out / "log.csv", LOG_FIELDS, keep_until=keep_until)
            self.loss_at = self.csv_log.losses(until=self.state.step)
            if self.state.start_loss is None:  # a checkpoint of an older version: log row 1 when it is there
                self.state.start_loss = self.loss_at.get(1)
            if self.evaluate is not None:
                self.eval_log = CsvLog(self.out / "eval.csv", EVAL_FIELDS, keep_until=keep_until)
        self.picture_every = cfg.picture_every if self.task.pictures else 0
        self.eval_every = cfg.eval_every if self.evaluate is not None else 0
        self.picture_spec = None
        self.bar = tqdm(total=cfg.steps, initial=self.state.step, desc=self.task.name, unit="step",
                        dynamic_ncols=True, disable=cfg.quiet or not main)
        self._t0 = self._last_t = time.time()
        self._last_step = self.state.step
        self._padding: tuple[int, int, int] | None = (0, 0, 0)  # (zeros, samples, batches) until decided
        self._tracker = BestTracker(cfg.patience)  # checkpoint selection and early stopping, as the recipe's
        best = self.state.best
        if best:  # resumed: the best so far still has to be beaten (its stale count is not checkpointed)
            self._tracker.best = (best["value"], -float(best.get("loss", 0.0)))
            self._tracker.best_step = best["step"]

    def _close_outputs(self) -> None:
        self.bar.close()
        if not self.info.is_main:
            return
        self.csv_log.close()
        if self.eval_log is not None:
            self.eval_log.close()
        self.tb.close()
        try:
            from ..viz import save_curves

            save_curves(self.out / "log.csv", self.out / "curves.png")
        except (ImportError, ValueError, OSError, KeyError) as e:  # pictures are a convenience, never a failure
            self.log(f"note: training curves not drawn ({e})")

    def _write_config(self) -> None:
        """``out/config.json``: the task, this trainer's config, the model config, the clip count, and the
        caller's ``settings`` (which win on shared keys)."""
        model_cfg = getattr(self.model, "config", None)
        settings = {"task": self.task.name, "train": self.config.to_dict(), "clips": len(self.dataset),
                    "model": model_cfg.to_dict() if model_cfg is not None else None, **self.settings}
        write_json_atomic(self.out / "config.json", settings)

    def run(self) -> dict:
        """Train to ``config.steps``; returns a summary dict (on every rank). Rank 0 writes ``config.json`` first
        and ``summary.json`` (the summary without the per-step losses) last."""
        cfg, st = self.config, self.state
        if self.info.is_main:
            self._write_config()
        self._open_outputs()
        self.model.train()
        self.frontend.train(self.task.name == "pretrain")
        if self.eval_every and st.step == 0 and cfg.eval_at_start:
            self._run_eval()  # the starting point competes too (e.g. LP-FT: the linear-probe head)
        stop = False
        while st.step < cfg.steps and not stop:
            for batch in self.input.epoch(st.epoch, st.batch_in_epoch):
                t_step = time.perf_counter()
                result = self._step(batch)
                if self.first_step_s is None and result is not None:
                    self.first_step_s = time.perf_counter() - t_step
                    if cfg.compile:
                        self.log(f"torch.compile: first step took {self.first_step_s:.1f} s (compilation included)")
                stop = result is not None and self._after_step(result)
                if stop or st.step >= cfg.steps:
                    break
            else:
                st.next_epoch()
        self._close_outputs()
        self.save()
        final = self.out / "final"
        if self.info.is_main:
            self.model.save_pretrained(final)
        barrier()
        if st.skipped_bad:
            self.log(f"warning: {st.skipped_bad} bad audio file(s) were replaced during training (listed in "
                     f"{self.out / 'bad_files.csv'})")
        if st.nonfinite:
            self.log(f"warning: {st.nonfinite} step(s) with a non-finite loss were skipped (column 'nonfinite' of "
                     "log.csv)")
        summary = {"steps": st.step, "final": str(final), "losses": self.losses, "skipped_bad": st.skipped_bad,
                   "nonfinite": st.nonfinite, "seconds": time.time() - self._t0, "world_size": self.info.world_size,
                   "global_batch": self.global_batch, "frontend": self.input.name, "best": st.best,
                   "compiled": cfg.compile, "first_step_s": self.first_step_s, "evals": self.evals}
        if self.info.is_main:
            write_json_atomic(self.out / "summary.json", {k: v for k, v in summary.items() if k != "losses"})
        return summary


def train(
    task: Task,
    dataset: Source,
    config: TrainConfig,
    frontend: LogMel,
    device: torch.device,
    log: Callable[..., None] = print,
    dist_info: DistInfo | None = None,
    evaluate: Evaluator | None = None,
    settings: dict[str, Any] | None = None,
) -> dict:
    """Run ``config.steps`` optimizer steps of ``task`` on ``dataset`` (see :class:`Trainer`); the summary dict.
    ``out/config.json`` records the run's settings (plus ``settings``), ``out/summary.json`` the summary."""
    return Trainer(task, dataset, config, frontend, device, log, dist_info, evaluate, settings).run()


def _reduce_step(loss: torch.Tensor, bad_files: int, grad_bad: torch.Tensor, grad_norm: torch.Tensor
                 ) -> tuple[float, float, bool, float]:
    """``(mean loss, total bad files, any rank's gradient norm non-finite, this rank's gradient norm)`` over
    ranks: one all-reduce (none with one process) and one device sync per step. A NaN on any rank reaches all."""
    t = torch.stack([loss.double(), torch.full_like(loss, bad_files, dtype=torch.float64), grad_bad.double().to(
        loss.device), grad_norm.detach().double().to(loss.device)])
    world = 1
    if active():
        import torch.distributed as dist

        world = dist.get_world_size()
        dist.all_reduce(t[:3])  # the norm (t[3]) stays local: after DDP's gradient all-reduce every rank has the same
    loss_sum, bad_total, grad_flag, norm = t.tolist()
    return loss_sum / world, bad_total, grad_flag > 0, norm


def _find_resume(resume: str | None, out: Path, log: Callable[..., None] = print) -> Path | None:
    """The checkpoint to resume from: ``auto`` takes the newest good one (all its weights finite)."""
    if not resume:
        return None
    if resume == "auto":
        return last_good_checkpoint(out, log)
    p = Path(resume)
    if not p.is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    return p


__all__ = ["NonFiniteLoss", "Trainer", "step_seed", "train"]
