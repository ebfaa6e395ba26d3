"""``hdf5:PATH[,PATH...]``: AudioSet packed as the official MaskSpec code and PaSST read it.

Layout of each file (see ``docs/MASKSPEC.md``, "Formats users bring"), ``n`` clips:

    audio_name  (n,)  fixed-length bytes, e.g. b"Y--PJHxphWEs.mp3"
    mp3         (n,)  variable-length uint8: the bytes of one (32 kHz) mp3 file per clip
    target      (n, ceil(C / 8)) uint8, optional: np.packbits of the C-class multi-hot row
                (read back with np.unpackbits(row, count=C)); C = num_classes, 527 for AudioSet;
                or (n,) integers: one class index per clip (-1: none)

Single-label sets: the same scripts pack ESC-50 (C = 50, one fold per file) as one-hot rows. The kind is read
from the data unless ``multilabel=`` says it: single-label when every clip of every file has exactly one class
(one-hot rows, or integer targets), multi-label otherwise; the trainer then uses cross-entropy and accuracy
for a single-label set, BCE and mAP for a multi-label one. ``multilabel=false`` on a file whose rows do not
each hold one class is an error naming the file and the row.

Several files (balanced + unbalanced train) form one set, in the order given. Entries are decoded from memory
(:func:`~maskspec_fast.data.decode.decode_bytes`). h5py handles do not survive ``fork``, so each process opens
the files itself on first use (the handle is keyed by the process id and dropped when the set is pickled).
A bad entry is an :class:`AudioFileError` named ``"<file>:<row>:<audio_name>"``. A file without ``target`` is
fine for pre-training: its clips have no labels (all-zero multi-hot rows; such a set is multi-label).
"""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..frontend.audio import AudioFileError
from .base import AudioDataset, DatasetError


def _h5py():
    try:
        import h5py
    except ImportError as e:
        raise DatasetError(f"hdf5: data sets need the h5py package: pip install h5py ({e})") from e
    return h5py


class HDF5Audio(AudioDataset):
    """AudioSet HDF5 files (module doc) as one :class:`AudioDataset` of ``sum(n_f)`` clips.

    Args:
        paths: one path, a comma-separated list, or a sequence of paths.
        num_classes: ``C``, the width of the unpacked ``target`` rows (default 527, AudioSet's; with integer
            targets only, the largest index + 1).
        min_samples: shortest usable clip after resampling (default: one 16-frame patch).
        multilabel: True (multi-hot labels, BCE) or False (one class index per clip, cross-entropy); None (the
            default): read from the targets (module doc).
    """

    multilabel = True
    label_sources = "the 'target' dataset of each file (packbits multi-hot rows or integer class indices)"

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        clip_seconds: float = 10.0,
        num_classes: int | None = None,
        min_samples: int | None = None,
        multilabel: bool | None = None,
        **kwargs,
    ):
        super().__init__(clip_seconds=clip_seconds, **kwargs)
        from ..frontend.audio import MIN_SAMPLES

        if isinstance(paths, (str, os.PathLike)):
            paths = [p for p in str(paths).split(",") if p.strip()]
        self.paths = [str(Path(p)) for p in paths]
        if not self.paths:
            raise DatasetError("hdf5: no file given (hdf5:PATH[,PATH...])")
        self.num_classes_ = 527 if num_classes is None else int(num_classes)
        self.min_samples = MIN_SAMPLES if min_samples is None else int(min_samples)
        h5py = _h5py()
        sizes, self.has_target = [], []
        self.target_kind: list[str | None] = []  # per file: "packed" | "index" | None
        largest = -1
        for p in self.paths:
            if not os.path.isfile(p):
                raise DatasetError(f"hdf5: {p} not found")
            try:
                with h5py.File(p, "r") as f:
                    for name in ("audio_name", "mp3"):
                        if name not in f:
                            raise DatasetError(f"hdf5: {p} has no dataset {name!r} (has {sorted(f.keys())})")
                    n = len(f["audio_name"])
                    if len(f["mp3"]) != n:
                        raise DatasetError(f"hdf5: {p}: 'mp3' has {len(f['mp3'])} rows, 'audio_name' {n}")
                    has = "target" in f
                    kind = None
                    if has:
                        width = (self.num_classes_ + 7) // 8
                        shape, dtype = f["target"].shape, f["target"].dtype
                        if len(shape) == 1 and shape[0] == n and np.issubdtype(dtype, np.integer):
                            kind = "index"
                            largest = max(largest, int(f["target"][:].max(initial=-1)))
                        elif len(shape) != 2 or shape[0] != n or shape[1] != width:
                            raise DatasetError(
                                f"hdf5: {p}: 'target' has shape {shape}, expected ({n}, {width}) = packbits of "
                                f"{self.num_classes_} classes (set num_classes=...) or ({n},) class indices"
                            )
                        else:
                            kind = "packed"
            except OSError as e:
                raise DatasetError(f"hdf5: {p} is not a readable HDF5 file ({e})") from e
            sizes.append(n)
            self.has_target.append(has)
            self.target_kind.append(kind)
        if num_classes is None and "index" in self.target_kind and "packed" not in self.target_kind:
            self.num_classes_ = largest + 1  # integer targets only: the classes they use
        if largest >= self.num_classes_:
            raise DatasetError(f"hdf5: a 'target' index is {largest}, beyond num_classes={self.num_classes_}")
        self.class_names = [str(c) for c in range(self.num_classes_)]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)  # (F + 1,)
        if self.starts[-1] == 0:
            raise DatasetError(f"hdf5: {', '.join(self.paths)} hold no clips")
        self._handles: dict[int, object] = {}
        self._pid = -1
        if multilabel is None:  # read the kind from the data: single-label when every clip has one class
            self.multilabel = self._first_not_single() is not None
        else:
            self.multilabel = bool(multilabel)
            where = None if self.multilabel else self._first_not_single()
            if where is not None:
                raise DatasetError(f"hdf5: multilabel=false, but {where[0]} row {where[1]} has {where[2]} classes "
                                   "(a single-label set needs exactly one per clip)")

    # ------------------------------------------------------------------------------------------ files
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1  # h5py handles are per process
        return state

    def _file(self, k: int):
        if self._pid != os.getpid():  # a forked worker: never reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(k)
        if f is None:
            f = self._handles[k] = _h5py().File(self.paths[k], "r")
        return f

    def _locate(self, index: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.starts, index) - 1
        return k, int(index - self.starts[k])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def num_classes(self) -> int:
        return self.num_classes_

    def name(self, index: int) -> str:
        """The ``audio_name`` of clip ``index`` as text (e.g. ``"Y--PJHxphWEs.mp3"``)."""
        k, j = self._locate(index)
        return bytes(self._file(k)["audio_name"][j]).rstrip(b"\0").decode("utf-8", "replace")

    def entry(self, index: int) -> str:
        """``"<file>:<row>:<audio_name>"``, how errors and the prepare index name a clip."""
        k, j = self._locate(index)
        return f"{self.paths[k]}:{j}:{self.name(index)}"

    # ---------------------------------------------------------------------------------------- samples
    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        from .decode import clip_window, decode_bytes

        k, j = self._locate(index)
        try:
            entry = self.entry(index)
            data = self._file(k)["mp3"][j]  # (bytes,) uint8
        except (OSError, KeyError, ValueError) as e:  # a damaged HDF5 chunk
            raise AudioFileError(f"{self.paths[k]}:{j}", f"unreadable HDF5 entry ({type(e).__name__}: {e})") from e
        return decode_bytes(np.asarray(data, dtype=np.uint8), entry, self.sample_rate, self.min_samples,
                            **clip_window(self, index)), entry

    def _hot(self, k: int, rows: slice | int) -> np.ndarray:
        """File ``k``'s target rows as multi-hot uint8 ``(r, C)`` (``(C,)`` for one row)."""
        t = self._file(k)["target"][rows]
        if self.target_kind[k] == "packed":
            return np.unpackbits(np.asarray(t, dtype=np.uint8), axis=-1, count=self.num_classes_)
        idx = np.atleast_1d(np.asarray(t, dtype=np.int64))
        hot = np.zeros((len(idx), self.num_classes_), dtype=np.uint8)
        hot[np.flatnonzero(idx >= 0), idx[idx >= 0]] = 1
        return hot if isinstance(rows, slice) else hot[0]

    def _first_not_single(self, chunk: int = 1 << 16) -> tuple[str, int, int] | None:
        """``(file, row, classes)`` of the first clip without exactly one class, or None if there is none. Read in
        chunks and stopped at the first such row: AudioSet's files show several classes within the first rows."""
        for k, p in enumerate(self.paths):
            n = int(self.starts[k + 1] - self.starts[k])
            if not self.has_target[k]:
                return (p, 0, 0) if n else None
            for a in range(0, n, chunk):
                counts = self._hot(k, slice(a, min(n, a + chunk))).sum(axis=1)
                off = np.flatnonzero(counts != 1)
                if len(off):
                    return p, a + int(off[0]), int(counts[off[0]])
        return None

    def _label(self, index: int) -> int | list[int]:
        k, j = self._locate(index)
        labels = np.flatnonzero(self._hot(k, j)).tolist() if self.has_target[k] else []
        if self.multilabel:
            return labels
        return labels[0]  # exactly one: checked when the set was built

    def targets(self) -> np.ndarray:
        """All labels as a ``(N, C)`` uint8 multi-hot array (zeros for files without ``target``)."""
        out = np.zeros((len(self), self.num_classes_), dtype=np.uint8)
        for k in range(len(self.paths)):
            if self.has_target[k]:
                out[self.starts[k] : self.starts[k + 1]] = self._hot(k, slice(None))
        return out

    def class_counts(self) -> torch.Tensor:
        return torch.from_numpy(self.targets().sum(axis=0, dtype=np.int64))

    def sample_weights(self, smoothing: float = 0.0) -> torch.Tensor:
        w = self.class_weights(smoothing).double().numpy()
        hot = self.targets()
        floor = float(w[w > 0].min()) if (w > 0).any() else 1.0
        s = hot @ w
        return torch.from_numpy(np.where(hot.any(axis=1), s, floor))


__all__ = ["HDF5Audio"]
