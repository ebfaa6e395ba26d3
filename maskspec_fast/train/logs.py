"""What a run writes as it goes: the CSV logs (``log.csv``, ``eval.csv``) and optional TensorBoard scalars."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", "audio_s_per_s", "elapsed_s",
              "skipped_bad", "nonfinite", "loss_scale"]
EVAL_FIELDS = ["step", "metric", "value", "loss", "best"]


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

    def losses(self, until: int) -> dict[int, float]:
        """``{step: loss}`` of the rows up to step ``until`` (rows without a numeric loss are left out)."""
        out: dict[int, float] = {}
        with self.path.open(newline="") as fh:
            for r in csv.DictReader(fh):
                step = _int(r.get("step"))
                try:
                    if 0 < step <= until:
                        out[step] = float(r.get("loss") or "")
                except ValueError:
                    pass
        return out

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


def append_bad_files(path: Path, step: int, bad: list[tuple[str, str]]) -> None:
    """One ``step,path,problem`` CSV row per replaced (or, from evaluation, left-out) file in ``bad_files.csv``
    (quoted by the csv module: paths may hold commas)."""
    with path.open("a", newline="") as fh:
        csv.writer(fh).writerows([step, p, problem] for p, problem in bad)


def write_bad_files(path: Path, bad: list[tuple[str, str]] | list[list[str]]) -> None:
    """``path,problem`` rows (with a header) of the bad files an evaluation left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "problem"])
        w.writerows([p, problem] for p, problem in bad)


__all__ = ["EVAL_FIELDS", "LOG_FIELDS", "CsvLog", "TensorBoard", "append_bad_files", "write_bad_files"]
