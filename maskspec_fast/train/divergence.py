"""Which checkpoint a stopped run can continue from: the divergence rule and the one-line advice of a
non-finite stop.

A finite checkpoint is not necessarily a good one: a blown-up lr first drives the loss far up with finite
weights, and only some steps later to NaN/Inf. Resuming from such a checkpoint, even with a lower lr, repeats the
stop. The rule (why these numbers: the loss of an untrained model is the level a run starts from, and a healthy
run never climbs two orders of magnitude above it; blown-up runs reach 1e5..1e19 within a few steps):

* the loss **on a checkpoint's weights** is the loss of the step after it (log row ``step + 1``: that step ran on
  exactly these weights), or its own step's loss where the next one is not known;
* that loss has **diverged** when it is not finite or exceeds :data:`DIVERGED_FACTOR` x the run's start loss (the
  loss of log row 1, computed on the weights the run started from, floored at :data:`LOSS_FLOOR`);
* the checkpoint holding the weights the failing step ran on repeats that step exactly on resume (same weights,
  same batch, same random draws; the lr does not enter before the update), so it is never offered either.

A non-finite stop writes :data:`MARKER` (its reason, one line) into every checkpoint it rejects, so that
``--resume auto`` passes over them too and the advice and ``auto`` agree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

DIVERGED_FACTOR = 100.0
LOSS_FLOOR = 1e-2  # a start loss near 0 (e.g. a near-perfect probe head) must not make every later loss "diverged"
MARKER = "DIVERGED"


def diverged(loss: float | None, start_loss: float | None) -> bool:
    """True when ``loss`` is not finite, or more than ``DIVERGED_FACTOR`` x ``max(start_loss, LOSS_FLOOR)``
    (False when ``loss`` is unknown; only the finiteness test applies when ``start_loss`` is unknown)."""
    if loss is None:
        return False
    if not math.isfinite(loss):
        return True
    return start_loss is not None and math.isfinite(start_loss) and \
        loss > DIVERGED_FACTOR * max(start_loss, LOSS_FLOOR)


@dataclass
class Verdict:
    """One step checkpoint judged by the rule: ``loss`` on its weights (None: unknown) and ``problem`` ("" when
    the run can continue from it)."""

    path: Path
    step: int
    loss: float | None
    problem: str = ""

    @property
    def good(self) -> bool:
        return not self.problem

    @property
    def diverged(self) -> bool:
        return self.problem.startswith("diverged")

    def describe(self) -> str:
        loss = "loss unknown" if self.loss is None else f"loss {self.loss:.4g}"
        return f"{self.path.name} ({loss}{', ' + self.problem if self.problem else ''})"


def judge(checkpoints: list[Path], losses: dict[int, float], start_loss: float | None,
          failing_step: int | None = None) -> list[Verdict]:
    """Verdicts on ``checkpoints`` (``step_XXXXXXXX`` folders, oldest first) from ``losses`` (log row step -> loss,
    the failing step's included) and the run's ``start_loss``. ``failing_step``: the step count whose weights the
    failing step ran on (its checkpoint repeats the stop), None outside a stop."""
    out = []
    for path in checkpoints:
        step = int(path.name.split("_")[1])
        loss = losses.get(step + 1, losses.get(step))
        if (path / MARKER).is_file():  # judged by an earlier stop, which knew the loss after it
            problem = (path / MARKER).read_text().strip() or "diverged"
        else:
            problem = ", ".join(p for p in (
                "diverged" if diverged(loss, start_loss) else "",
                f"step {step + 1} failed on these weights" if step == failing_step else "") if p)
        out.append(Verdict(path, step, loss, problem))
    return out


def mark(verdicts: list[Verdict]) -> None:
    """Write :data:`MARKER` (the reason) into each rejected checkpoint, for ``--resume auto``."""
    for v in verdicts:
        if not v.good and not (v.path / MARKER).is_file():
            try:
                (v.path / MARKER).write_text(v.problem + "\n")
            except OSError:  # a full disk must not hide the stop's own message; the advice names the folder anyway
                pass


def stop_advice(verdicts: list[Verdict], out: Path, start_loss: float | None, peak_lr: float) -> str:
    """The part of a non-finite stop's one-line message that says where to continue from.

    None diverged: ``last good checkpoint: PATH (resume from it with --resume auto)``. Some diverged: the
    checkpoints with their losses and ``--resume PATH`` of the newest good one, with a lower ``--lr``. None good:
    start again with a lower ``--lr``."""
    good = [v for v in verdicts if v.good]
    listing = ", ".join(v.describe() for v in verdicts)
    start = "" if start_loss is None else f"; start loss {start_loss:.4g}"
    if not good:
        found = f" ({listing}{start})" if verdicts else ""
        again = f"an --lr below {peak_lr:.3g}" if any(v.diverged for v in verdicts) else "e.g. a lower lr"
        return f"no good checkpoint exists in {Path(out) / 'checkpoints'}{found}: start again with {again}"
    if not any(v.diverged for v in verdicts):
        return f"last good checkpoint: {good[-1].path} (resume from it with --resume auto)"
    return (f"the loss diverged (above {DIVERGED_FACTOR:g}x the start loss) after the last good checkpoint "
            f"(checkpoints: {listing}{start}); continue from it with an --lr below {peak_lr:.3g}: "
            f"--resume {good[-1].path}")


__all__ = ["DIVERGED_FACTOR", "LOSS_FLOOR", "MARKER", "Verdict", "diverged", "judge", "mark", "stop_advice"]
