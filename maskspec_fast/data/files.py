"""File-based data sets: unlabeled folders, class folders, ESC-50 and AudioSet-style manifests.

Each exposes ``items: list[(path, label)]`` (label: int, -1 for unlabeled, or list[int] for multi-label) so that
another pipeline (e.g. DALI) can read exactly the same files in the same order.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Sequence

from ..frontend.audio import AUDIO_EXTENSIONS
from .base import DatasetError, FileDataset
from .labels import decide_multilabel


def walk_files(root: str | os.PathLike, suffixes: Sequence[str], outside: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Files under ``root`` whose extension (case-insensitive) is in ``suffixes``, recursively, sorted; hidden
    entries (a leading ``.``) skipped. The one folder walk of every folder lister (folders, class folders, parquet
    folders).

    Symbolic links to folders are followed, but each folder is entered once, keyed by ``(st_dev, st_ino)``, and each
    file is listed once (the first name met in sorted depth-first order). Why: a link back up the tree
    (``sub/up -> ..``) would otherwise list every file again on each turn of the loop until the path length limit,
    and two links to one folder would duplicate its clips; what was left out is said in one warning. Folders in
    ``outside`` are never entered (a class folder's walk stays out of the other classes and their parent).
    Entries with a wanted extension that are not regular files (a FIFO, a socket, a device, a dangling link) are
    listed too: reading them reports each as a bad file, so nothing named like audio disappears unsaid.
    """
    wanted = {s.lower() for s in suffixes}
    seen_dirs: set[tuple[int, int]] = set()
    for d in outside:
        with contextlib.suppress(OSError):
            st = os.stat(d)
            seen_dirs.add((st.st_dev, st.st_ino))
    seen_files: set[tuple[int, int]] = set()
    out: list[Path] = []
    repeats: list[str] = []
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                repeats.append(folder)
                continue
            seen_dirs.add(key)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:  # unreadable folder or a dangling link: said, not silently skipped
            warnings.warn(f"{folder}: cannot be listed ({e.strerror or e}); its files are left out", stacklevel=3)
            continue
        subdirs = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():  # follows links
                    subdirs.append(e.path)
                elif os.path.splitext(e.name)[1].lower() in wanted:
                    if not e.is_file():
                        # a FIFO, socket, device or dangling link named like audio: listed, so that reading it
                        # reports it as a bad file (load_audio refuses it without opening), never dropped unsaid
                        out.append(Path(e.path))
                        continue
                    fst = e.stat()
                    fkey = (fst.st_dev, fst.st_ino)
                    if fkey in seen_files:
                        repeats.append(e.path)
                        continue
                    seen_files.add(fkey)
                    out.append(Path(e.path))
            except OSError as err:  # an entry that cannot even be inspected: said, not silently skipped
                warnings.warn(f"{e.path}: cannot be inspected ({err.strerror or err}); left out", stacklevel=3)
                continue
        stack.extend(reversed(subdirs))  # depth-first in sorted order
    if repeats:
        warnings.warn(f"{root}: {len(repeats)} folder(s) or file(s) reached a second time through links were listed "
                      f"once (e.g. {repeats[0]})", stacklevel=3)
    return sorted(out)


def _audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (:func:`walk_files` with the audio extensions)."""
    return walk_files(root, AUDIO_EXTENSIONS)


def _check_dir(root: str | os.PathLike, what: str) -> Path:
    p = Path(root)
    if not p.is_dir():
        raise DatasetError(f"{what}: {p} is not a directory")
    return p


class AudioFolder(FileDataset):
    """Every audio file (wav/flac/ogg/mp3) under ``root``, recursively, sorted by path; unlabeled (label -1),
    for pre-training. ``num_classes`` is 0."""

    multilabel = False
    label_sources = "none: folder: is unlabeled (use classes:DIR, one sub-folder per class, or manifest:FILE)"

    def __init__(self, root: str | os.PathLike, clip_seconds: float = 10.0, **kwargs):
        root = _check_dir(root, "AudioFolder")
        files = _audio_files(root)
        if not files:
            raise DatasetError(f"AudioFolder: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {root}")
        super().__init__([(str(f), -1) for f in files], clip_seconds=clip_seconds, **kwargs)
        self.root = root
        self.class_names = []


class ClassFolders(FileDataset):
    """``root/<class name>/**/<file>``: one sub-folder per class, classes = sorted sub-folder names (indices in that
    order), files found recursively inside each. Pass ``class_names`` to fix the vocabulary (e.g. a validation
    split that lacks a class); folders not in it are an error."""

    multilabel = False

    def __init__(
        self,
        root: str | os.PathLike,
        clip_seconds: float = 10.0,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ):
        root = _check_dir(root, "ClassFolders")
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise DatasetError(f"ClassFolders: no class sub-folders under {root}")
        names = list(class_names) if class_names is not None else found
        unknown = sorted(set(found) - set(names))
        if unknown:
            raise DatasetError(f"ClassFolders: folders {unknown} under {root} are not in class_names")
        items: list[tuple[str, int]] = []
        for c, name in enumerate(names):
            if name not in found:
                continue
            others = [root, *(root / n for n in found if n != name)]  # a link out of the class is not followed
            files = walk_files(root / name, AUDIO_EXTENSIONS, outside=others)
            if not files and class_names is None:
                raise DatasetError(f"ClassFolders: class folder {root / name} holds no audio files")
            items += [(str(f), c) for f in files]
        if not items:
            raise DatasetError(f"ClassFolders: no audio files under {root}")
        super().__init__(items, clip_seconds=clip_seconds, **kwargs)
        self.root = root
        self.class_names = names


class ESC50(FileDataset):
    """ESC-50 layout: ``root/meta/esc50.csv`` (columns ``filename,fold,target,category``, more allowed) and
    ``root/audio/<filename>``. ``folds`` selects rows (e.g. (1, 2, 3, 4) to train, (5,) to test). Classes: the
    ``category`` of each ``target`` over the whole csv (all folds), so indices agree across splits.

    A missing or malformed csv is a :class:`DatasetError` naming the csv; listed files that do not exist are an
    error naming the csv and the files with ``on_error="raise"``, and a warning with ``on_error="skip"`` (they are
    then replaced and reported at load time like any bad file).
    """

    multilabel = False
    REQUIRED = ("filename", "fold", "target", "category")

    def __init__(
        self,
        root: str | os.PathLike,
        folds: Iterable[int] = (1, 2, 3, 4),
        clip_seconds: float = 5.0,
        csv_path: str | os.PathLike | None = None,
        **kwargs,
    ):
        root = _check_dir(root, "ESC50")
        csv_file = Path(csv_path) if csv_path is not None else root / "meta" / "esc50.csv"
        if not csv_file.is_file():
            raise DatasetError(
                f"ESC50: metadata csv {csv_file} not found (expected ESC-50 layout: meta/esc50.csv)"
            )
        folds = tuple(int(f) for f in folds)
        rows = _read_esc50_csv(csv_file, self.REQUIRED)
        targets: dict[int, str] = {}
        for line, r in rows:
            if targets.setdefault(r["target"], r["category"]) != r["category"]:
                raise DatasetError(
                    f"ESC50: {csv_file} line {line}: target {r['target']} is {r['category']!r} here but "
                    f"{targets[r['target']]!r} earlier"
                )
        num_classes = max(targets) + 1
        names = [targets.get(t, f"class_{t}") for t in range(num_classes)]
        items = [(str(root / "audio" / r["filename"]), r["target"]) for _, r in rows if r["fold"] in folds]
        if not items:
            present = sorted({r["fold"] for _, r in rows})
            raise DatasetError(f"ESC50: {csv_file} has no rows in folds {folds} (folds present: {present})")
        missing = [p for p, _ in items if not os.path.isfile(p)]
        if missing:
            msg = (
                f"ESC50: {len(missing)} file(s) listed in {csv_file} are missing under {root / 'audio'}, "
                f"e.g. {', '.join(missing[:3])}"
            )
            if kwargs.get("on_error", "raise") == "raise":
                raise DatasetError(msg)
            warnings.warn(msg + " (they will be replaced and reported at load time)", stacklevel=2)
        super().__init__(items, clip_seconds=clip_seconds, **kwargs)
        self.root, self.csv_path, self.folds, self.missing = root, csv_file, folds, missing
        self.class_names = names


def _read_esc50_csv(csv_file: Path, required: Sequence[str]) -> list[tuple[int, dict]]:
    try:
        with open(csv_file, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            lacking = [c for c in required if c not in header]
            if lacking:
                raise DatasetError(
                    f"ESC50: {csv_file} is malformed: header {header} lacks column(s) {lacking} "
                    f"(need {', '.join(required)})"
                )
            reader.fieldnames = header
            rows = []
            for line, r in enumerate(reader, start=2):
                try:
                    row = {
                        "filename": r["filename"].strip(),
                        "fold": int(r["fold"]),
                        "target": int(r["target"]),
                        "category": r["category"].strip(),
                    }
                except (TypeError, ValueError, AttributeError) as e:
                    raise DatasetError(f"ESC50: {csv_file} is malformed at line {line}: {r} ({e})") from e
                if not row["filename"] or row["target"] < 0:
                    raise DatasetError(f"ESC50: {csv_file} is malformed at line {line}: {r}")
                rows.append((line, row))
    except UnicodeDecodeError as e:
        raise DatasetError(f"ESC50: {csv_file} is malformed (not text: {e})") from e
    if not rows:
        raise DatasetError(f"ESC50: {csv_file} has a header but no rows")
    return rows


_SPLIT = re.compile(r"[;,]")
_PATH_KEYS = ("path", "filename", "file", "audio", "wav")
_LABEL_KEYS = ("labels", "label", "positive_labels", "targets")


def _split_labels(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [s.strip() for s in _SPLIT.split(str(value)) if s.strip()]


def _sort_names(names: Iterable[str]) -> list[str]:
    """Sorted label vocabulary; numerically when every name is an integer (so "10" follows "9")."""
    names = set(names)
    if names and all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


class Manifest(FileDataset):
    """AudioSet-style multi-label manifest, one clip per row:

    * CSV: ``path,labels`` with the labels separated by ``;`` or ``,`` (quoted, or as the trailing fields of an
      unquoted row: ``a.wav,dog,bark``); an optional header names the columns (``path``/``filename``/``file`` and
      ``labels``/``label``); lines starting with ``#`` are comments;
    * JSON lines (``.jsonl``/``.json`` or first character ``{``): ``{"path": ..., "labels": [...]}``.

    Relative paths are resolved against the manifest's folder. Label names map to indices in sorted order
    (numeric order when all are integers) unless ``class_names`` fixes the vocabulary. Single-label (class index,
    cross-entropy) when every clip has exactly one label, else multi-label (multi-hot ``(C,)`` float32), unless
    ``multilabel=`` says it (:func:`~maskspec_fast.data.labels.decide_multilabel`). ``class_weights()`` / ``sample_weights()`` give class-balanced sampling.
    """

    multilabel = True
    label_sources = f"the label column ({' / '.join(_LABEL_KEYS)}) of each row"

    def __init__(
        self,
        path: str | os.PathLike,
        clip_seconds: float = 10.0,
        class_names: Sequence[str] | None = None,
        multilabel: bool | None = None,
        **kwargs,
    ):
        mpath = Path(path)
        if not mpath.is_file():
            raise DatasetError(f"Manifest: {mpath} not found")
        try:
            text = mpath.read_text()
        except UnicodeDecodeError as e:
            raise DatasetError(f"Manifest: {mpath} is not a text file ({e})") from e
        is_json = mpath.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{")
        rows = _parse_jsonl(mpath, text) if is_json else _parse_csv(mpath, text)
        if not rows:
            raise DatasetError(f"Manifest: {mpath} lists no clips")
        if class_names is None:
            names = _sort_names(lab for _, labs in rows for lab in labs)
        else:
            names = list(class_names)
        index = {n: i for i, n in enumerate(names)}
        items: list[tuple[str, list[int]]] = []
        for p, labs in rows:
            unknown = [lab for lab in labs if lab not in index]
            if unknown:
                raise DatasetError(f"Manifest: {mpath}: clip {p} has labels {unknown} not in class_names")
            full = Path(p) if os.path.isabs(p) else mpath.parent / p
            items.append((str(full), sorted({index[lab] for lab in labs})))
        # the one rule (data.labels.decide_multilabel): one label per clip -> single-label, as hdf5: and shards
        self.multilabel = decide_multilabel([len(labs) for _, labs in items], multilabel, f"manifest:{mpath}")
        if not self.multilabel:
            items = [(p, labs[0]) for p, labs in items]
        super().__init__(items, clip_seconds=clip_seconds, **kwargs)  # multilabel decided here, not passed on
        self.manifest_path = mpath
        self.class_names = names


def _parse_csv(mpath: Path, text: str) -> list[tuple[str, list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = list(csv.reader(lines, skipinitialspace=True))
    if not rows:
        return []
    head = [h.strip().lower() for h in rows[0]]
    path_col, label_col, trailing = 0, 1, True  # no header: path, then every other field is a label
    if any(h in _PATH_KEYS for h in head):  # a header row names the columns
        path_col = head.index(next(h for h in head if h in _PATH_KEYS))
        label_col = next((i for i, h in enumerate(head) if h in _LABEL_KEYS), None)
        trailing = label_col == len(head) - 1  # the last column may spill over unquoted ',' separators
        rows = rows[1:]
    out = []
    for k, r in enumerate(rows, start=1):
        if len(r) <= path_col or not r[path_col].strip():
            raise DatasetError(f"Manifest: {mpath}: row {k} {r} has no path")
        if label_col is None or len(r) <= label_col:
            labels: list[str] = []
        elif trailing:
            labels = _split_labels(",".join(r[label_col:]))
        else:
            labels = _split_labels(r[label_col])
        out.append((r[path_col].strip(), labels))
    return out


def _parse_jsonl(mpath: Path, text: str) -> list[tuple[str, list[str]]]:
    out = []
    for k, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"Manifest: {mpath} line {k} is not valid JSON ({e})") from e
        if not isinstance(obj, dict):
            raise DatasetError(f"Manifest: {mpath} line {k}: expected an object, got {type(obj).__name__}")
        p = next((obj[key] for key in _PATH_KEYS if key in obj), None)
        if not isinstance(p, str) or not p:
            raise DatasetError(f"Manifest: {mpath} line {k} has no 'path'")
        labels = next((obj[key] for key in _LABEL_KEYS if key in obj), [])
        out.append((p, _split_labels(labels)))
    return out


__all__ = ["AudioFolder", "ClassFolders", "ESC50", "Manifest", "walk_files"]
