"""The one Dataset interface shared by every source (synthetic, folders, ESC-50, manifests) and its collate.

A sample is a dict::

    {"wave": FloatTensor (clip_samples,),            # mono, sample_rate Hz, cropped / zero-padded
     "label": LongTensor () | FloatTensor (C,),       # class index (-1 unlabeled) | multi-hot (multilabel sets)
     "path": str,                                     # "" for synthetic clips
     "index": int,                                    # the index whose audio and label these are
     "replaced": str, "replaced_reason": str,         # "" unless on_error="skip" replaced a bad file
     "padded": int}                                   # zeros appended: the file was shorter than the clip
     (+ "omitted": str, "omitted_reason": str from :meth:`AudioDataset.clip`: a bad file evaluation leaves out)

With ``on_error="skip"`` a file that fails to load (:class:`~maskspec_fast.frontend.audio.AudioFileError`) is
replaced by the next index that loads (wrapping around); the sample then names the bad file in ``replaced`` and
the problem in ``replaced_reason``, so the training loop can count it: each bad file is reported every time its
index is drawn, nothing is dropped silently. Evaluation never substitutes: it reads :meth:`AudioDataset.clip`, where
a bad file (in skip mode) comes back as a placeholder naming it in ``omitted``, which the evaluator leaves out of
the score and reports.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..frontend.audio import SAMPLE_RATE, AudioFileError, crop_or_pad, load_audio
from .errors import DatasetError
from .labels import class_balanced_weights, class_counts, class_weights, decide_multilabel, labels_tensor

ON_ERROR = ("raise", "skip")


class AudioDataset(Dataset):
    """Base class: fixed-length mono clips with labels, common options and the skip-on-error policy.

    Args:
        clip_seconds: clip length; ``clip_samples = round(clip_seconds * sample_rate)``.
        sample_rate: output rate in Hz (files are resampled to it).
        train: random crop of longer clips (seeded by ``(seed, epoch, index)``, see :meth:`set_epoch`) when True,
            the first ``clip_samples`` when False.
        seed: base seed of all randomness in the set (crops, synthetic content).
        on_error: ``"raise"`` the :class:`AudioFileError` of a bad file, or ``"skip"`` it (see module doc).

    Subclasses set ``class_names`` (list[str]) and ``multilabel`` and implement ``__len__``, ``_load(index)``
    (returning ``(wave (n,), path)``) and ``_label(index)`` (int, -1 for unlabeled, or list[int] if multilabel).
    """

    multilabel: bool = False
    class_names: list[str] = []
    streaming: bool = False  # a MapSource (maskspec_fast.data.interfaces); ShardStream overrides
    provides: Literal["wave", "spec"] = "wave"
    label_sources: Any = "labels"  # where labels are looked for (named by require_labels when none are found)
    whole_clips: bool = False  # decode whole files instead of the clip's window (prepare sets it)

    def __init__(
        self,
        clip_seconds: float = 10.0,
        sample_rate: int = SAMPLE_RATE,
        train: bool = False,
        seed: int = 0,
        on_error: str = "raise",
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
        self.clip_seconds = float(clip_seconds)
        self.sample_rate = int(sample_rate)
        self.clip_samples = int(round(self.clip_seconds * self.sample_rate))
        self.train = bool(train)
        self.seed = int(seed)
        self.on_error = on_error
        self.epoch = 0

    # ----------------------------------------------------------------------------------------------- labels
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _label(self, index: int) -> int | list[int]:
        raise NotImplementedError

    def _label_tensor(self, label: int | list[int]) -> torch.Tensor:
        if self.multilabel:
            hot = torch.zeros(self.num_classes, dtype=torch.float32)
            hot[list(label)] = 1.0
            return hot  # (C,)
        return torch.tensor(int(label), dtype=torch.long)  # ()

    def labels(self) -> torch.Tensor:
        """Every clip's label without decoding audio: ``(N,)`` int64 (-1: unlabeled) or ``(N, C)`` float32
        multi-hot for multi-label sets."""
        return labels_tensor([self._label(i) for i in range(len(self))], self.num_classes, self.multilabel)

    def class_counts(self) -> torch.Tensor:
        """Clips per class ``(C,)`` int64 (a multi-label clip counts once for each of its classes)."""
        return class_counts(self.labels(), self.num_classes)

    def class_weights(self, smoothing: float = 0.0) -> torch.Tensor:
        """Inverse-frequency class weights ``(C,)`` float32 (:func:`class_weights`)."""
        return class_weights(self.labels(), self.num_classes, smoothing).float()

    def sample_weights(self, smoothing: float = 0.0) -> torch.Tensor:
        """Per-clip class-balanced draw weights ``(N,)`` float64 (:func:`class_balanced_weights`)."""
        return class_balanced_weights(self.labels(), self.num_classes, smoothing)

    def files(self) -> list[tuple[str, int | list[int]]] | None:
        """``[(path, label)]`` for file-based sets (readable by DALI); None: clips are made in Python."""
        return None

    def subset(self, indices: Sequence[int] | torch.Tensor) -> AudioDataset:
        """The clips ``indices`` as a map-style source of their own (:class:`~maskspec_fast.data.subset.MapSubset`)."""
        from .subset import MapSubset

        return MapSubset(self, indices)

    # ------------------------------------------------------------------------------------------ loading
    def set_epoch(self, epoch: int) -> None:
        """Training crops are drawn from ``(seed, epoch, index)``: call once per epoch for fresh crops that do not
        depend on the number of DataLoader workers."""
        self.epoch = int(epoch)

    def _generator(self, index: int, stream: int = 0) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch, int(index), stream]).generate_state(
            2, np.uint32
        )
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        raise NotImplementedError

    def _sample(self, index: int) -> dict[str, Any]:
        wave, path = self._load(index)
        padded = max(0, self.clip_samples - int(wave.shape[-1]))
        wave = crop_or_pad(wave, self.clip_samples, random=self.train, generator=self._generator(index))
        return {
            "wave": wave.float().contiguous(),
            "label": self._label_tensor(self._label(index)),
            "path": path,
            "index": int(index),
            "replaced": "",
            "replaced_reason": "",
            "padded": padded,
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {n} clips")
        return self.sample(index)

    def sample(self, index: int, pool: np.ndarray | None = None) -> dict[str, Any]:
        """Clip ``index`` as a sample dict. With ``on_error="skip"`` a clip that fails to load is replaced by the
        next one of ``pool`` that loads (``pool``: sorted ids replacements may come from, default every clip; a
        subset passes its own ids, so a replacement never comes from outside it), wrapping around."""
        try:
            return self._sample(index)
        except AudioFileError as err:
            if self.on_error == "raise":
                raise
            first = err
        ids = np.arange(len(self)) if pool is None else np.asarray(pool)
        pos = int(np.searchsorted(ids, index))
        for k in range(1, len(ids)):
            j = int(ids[(pos + k) % len(ids)])
            try:
                sample = self._sample(j)
            except AudioFileError:
                continue  # reported when its own index is drawn
            sample["replaced"], sample["replaced_reason"] = first.path, first.problem
            return sample
        raise DatasetError(f"{type(self).__name__}: none of the {len(ids)} files could be loaded (first: {first})")

    def clip(self, index: int) -> dict[str, Any]:
        """Clip ``index`` as evaluation reads it: never replaced by another clip. With ``on_error="raise"`` a bad
        file raises its :class:`AudioFileError`; with ``"skip"`` it comes back as a placeholder (zeros) whose
        ``omitted`` names the file and ``omitted_reason`` the problem, to be left out of the score and reported."""
        try:
            return self._sample(index)
        except AudioFileError as err:
            if self.on_error == "raise":
                raise
            return {"wave": torch.zeros(self.clip_samples), "label": self._label_tensor(self._label(index)),
                    "path": err.path, "index": int(index), "replaced": "", "replaced_reason": "",
                    "omitted": err.path, "omitted_reason": err.problem}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(clips={len(self)}, classes={self.num_classes}, multilabel={self.multilabel}, "
            f"clip_seconds={self.clip_seconds}, sample_rate={self.sample_rate}, train={self.train}, "
            f"seed={self.seed}, on_error={self.on_error!r})"
        )


class FileDataset(AudioDataset):
    """A data set of audio files: ``items[i] = (path, label)`` is the whole index, readable by other pipelines
    (e.g. DALI) as is. Files are decoded with :func:`~maskspec_fast.frontend.audio.load_audio`; a clip shorter
    than ``min_samples`` after resampling is an error (default: one 16-frame patch, 5121 samples at 32 kHz).
    ``multilabel``: the spec option ``:multilabel=true|false`` (None: the kind's own rule)."""

    def __init__(
        self, items: Sequence[tuple[str, int | list[int]]], min_samples: int | None = None,
        multilabel: bool | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        from ..frontend.audio import MIN_SAMPLES

        items = list(items)
        if multilabel is not None:  # the spec's :multilabel=true|false, checked by the one rule
            counts = [len(set(lab)) if isinstance(lab, list) else int(lab >= 0) for _, lab in items]
            self.multilabel = decide_multilabel(counts, multilabel, type(self).__name__)
            items = [(p, _as_kind(lab, self.multilabel)) for p, lab in items]
        self.items: list[tuple[str, int | list[int]]] = items
        self.min_samples = MIN_SAMPLES if min_samples is None else int(min_samples)

    def __len__(self) -> int:
        return len(self.items)

    def _label(self, index: int) -> int | list[int]:
        return self.items[index][1]

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        path = self.items[index][0]
        from .decode import clip_window

        return load_audio(path, self.sample_rate, min_samples=self.min_samples or None,
                          **clip_window(self, index)), path

    @property
    def paths(self) -> list[str]:
        return [p for p, _ in self.items]

    def files(self) -> list[tuple[str, int | list[int]]]:
        return list(self.items)


def _as_kind(label: int | list[int], multilabel: bool) -> int | list[int]:
    """A clip's label as a multi-label set wants it (a list) or a single-label one does (an index, -1: none)."""
    if multilabel:
        return sorted(set(label)) if isinstance(label, list) else ([label] if label >= 0 else [])
    return (label[0] if label else -1) if isinstance(label, list) else label


def collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: ``wave (B, clip_samples)`` (or ``spec (B, n_mels, T)`` from log-mel sources), ``label (B,)``
    int64 or ``(B, C)`` float32, ``index (B,)`` int64, ``path`` list[str], ``replaced``: list of
    ``(bad_path, problem)`` for the samples that replaced a bad file (empty when none), so the caller can count
    and log them, ``padded (B,)`` int64 zeros appended to each clip, and ``omitted (B,)`` bool with ``omitted_files`` ``[(path, problem)]``: the placeholders of bad
    files read by :meth:`AudioDataset.clip`, which evaluation leaves out."""
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    key = "spec" if "spec" in batch[0] else "wave"
    return {
        key: torch.stack([b[key] for b in batch]),
        "label": torch.stack([b["label"] for b in batch]),
        "index": torch.tensor([int(b["index"]) for b in batch], dtype=torch.long),
        "path": [b["path"] for b in batch],
        "replaced": [(b["replaced"], b.get("replaced_reason", "")) for b in batch if b.get("replaced")],
        "padded": torch.tensor([int(b.get("padded", 0)) for b in batch], dtype=torch.long),
        "omitted": torch.tensor([bool(b.get("omitted")) for b in batch], dtype=torch.bool),
        "omitted_files": [(b["omitted"], b.get("omitted_reason", "")) for b in batch if b.get("omitted")],
    }


__all__ = ["AudioDataset", "DatasetError", "FileDataset", "class_balanced_weights", "class_counts", "class_weights",
           "collate",
           "labels_tensor"]
