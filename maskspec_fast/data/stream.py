"""``webdataset:PATTERN``: training straight from tar shards, streamed in shard order through a shuffle buffer.

Epoch ``e``'s global order (a function of ``(seed, e)`` only, the same on every rank and worker):

1. the shards in the order :func:`~maskspec_fast.data.order.epoch_order` ``(S, seed, e)`` gives (tar order inside
   each shard), so reading moves through a few shards at a time;
2. that stream of ``N`` samples through a shuffle buffer of ``B`` slots: fill ``B``, then for each further sample
   emit a uniformly chosen slot and put the sample there, then emit the rest in random order (a seeded
   ``numpy`` generator; ``B = 0`` or ``train=False`` keeps the stream order);
3. split across ranks by :func:`~maskspec_fast.data.order.rank_share` (rank r takes positions r, r + w, ...,
   padded by wrapping), so the global batch ``s`` is the union of the ranks' local batches ``s`` for any world
   size, exactly as on the map-style path.

A rank's local batch ``j`` is positions ``[j b, (j + 1) b)`` of its share, and DataLoader worker ``w`` of ``W``
builds batches ``j = start + w, start + w + W, ...``: the DataLoader's round-robin over workers then yields
batches ``start, start + 1, ...`` in order, whatever ``W`` is. Each sample's audio is read by offset (the
:class:`~maskspec_fast.data.shards.ShardIndex`), so every clip is decoded once per epoch by exactly one worker of
one rank, and a resumed run starts at batch ``start`` without decoding the ones before.

Why not webdataset's own ``split_by_node`` / ``split_by_worker``: they split shards (``urls[rank::world]``), which
gives ranks unequal sample counts (DDP needs equal step counts) and a batch order that changes with the number
of workers; the package is used for its conventions (brace patterns, sample keys, ``TarWriter``).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any, Sequence

import numpy as np
import torch

from ..frontend.audio import AudioFileError
from .base import AudioDataset
from .labels import decide_multilabel, labels_tensor
from .order import epoch_order, per_rank, rank_share
from .shards import LABEL_SOURCES, ShardIndex, read_class_list, scan_shards
from .subset import Subset


def shuffle_buffer(stream: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a ``size``-slot shuffle buffer emits ``stream`` (``(N,)`` -> ``(N,)``, a permutation)."""
    n = len(stream)
    if size <= 1 or n <= 1:
        return stream.copy()
    size = min(size, n)
    buf = stream[:size].copy()
    out = np.empty(n, dtype=stream.dtype)
    picks = rng.integers(0, size, n - size)
    for k in range(n - size):  # emit a random slot, refill it with the next sample of the stream
        j = picks[k]
        out[k] = buf[j]
        buf[j] = stream[size + k]
    out[n - size :] = buf[rng.permutation(size)]
    return out


def _batch_buffer(shape: tuple[int, int]) -> torch.Tensor:
    """An uninitialized float32 tensor of ``shape``; in shared memory inside a DataLoader worker.

    Why: a worker's batch is moved into shared memory when it is sent (allocation + copy + page faults of the
    whole batch, 20 MB for 16 clips of 10 s); allocating it there from the start saves the copy.
    ``UntypedStorage._new_shared`` is how torch's ``default_collate`` allocates worker batches; if a torch
    version lacks it, the batch is allocated normally (and copied when sent, as any batch is).
    """
    from torch.utils.data import get_worker_info

    if get_worker_info() is not None:
        try:
            storage = torch.UntypedStorage._new_shared(shape[0] * shape[1] * 4)
            return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
        except (AttributeError, RuntimeError):
            pass
    return torch.empty(shape, dtype=torch.float32)


class ShardStream(AudioDataset):
    """WebDataset tar shards as a streaming source (module doc); also random access (``self[i]``) for
    ``prepare`` and evaluation.

    Args:
        pattern: brace pattern(s) of the shards (``::`` joins several) or a list of paths.
        shuffle_buffer: slots of the shuffle buffer (0: stream order).
        classes: a class list file (one name per line, or AudioSet's ``class_labels_indices.csv``).
        num_classes: index labels ``0 .. C-1`` (when there is no class list).
        min_samples: shortest usable clip after resampling (default: one 16-frame patch).
        multilabel: multi-hot labels (default; False for a single-label set: the first label, -1 if none;
            a set written by ``prepare`` keeps its source's kind, and a set labelled by ``.cls`` members only,
            webdataset's one-class-index-per-sample convention, is single-label).
        Other options as :class:`AudioDataset` (``clip_seconds``, ``train``, ``seed``, ``on_error``).

    A :class:`~maskspec_fast.data.interfaces.StreamSource` (``streaming = True``): the trainer reads it through
    :class:`~maskspec_fast.train.inputs.StreamInput`.
    ``bad`` lists ``(shard:member, problem)`` found by the scan (``on_error="skip"``).
    """

    multilabel = True
    streaming = True
    label_sources = LABEL_SOURCES  # where labels are looked for (named when none are found)

    def __init__(
        self,
        pattern: str | Sequence[str],
        clip_seconds: float = 10.0,
        shuffle_buffer: int = 1000,
        classes: str | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        min_samples: int | None = None,
        multilabel: bool | None = None,
        **kwargs,
    ):
        super().__init__(clip_seconds=clip_seconds, **kwargs)
        from ..frontend.audio import MIN_SAMPLES

        if classes is not None and class_names is None:
            class_names = read_class_list(classes)
        self.pattern = pattern
        self.index: ShardIndex = scan_shards(pattern, self.on_error, class_names, num_classes)
        self.class_names = self.index.class_names
        meta = self._prepared_meta()
        if multilabel is None and "multilabel" in meta:  # prepared shards keep the kind of the set they came from
            multilabel = bool(meta["multilabel"])
        # the one rule (data.labels.decide_multilabel): single-label when every sample has exactly one class, as
        # for manifests and hdf5:, whether the labels came from .cls or .json members
        self.multilabel = decide_multilabel(np.diff(self.index.label_ptr), multilabel, f"webdataset:{pattern}")
        self.bad = list(self.index.bad)
        self.shuffle_buffer = int(shuffle_buffer)
        self.min_samples = MIN_SAMPLES if min_samples is None else int(min_samples)
        self._handles: dict[int, Any] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, -1  # open files stay in their process
        return state

    # ------------------------------------------------------------------------------------------ reading
    def _open(self, s: int):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(s)
        if f is None:
            if len(self._handles) >= 8:  # a few shards are open at a time: the stream moves through them
                self._handles.pop(next(iter(self._handles))).close()
            f = self._handles[s] = open(self.index.shards[s], "rb")
        return f

    def read_member(self, i: int) -> bytes:
        """The audio member's bytes of sample ``i``; AudioFileError if the shard cannot deliver them."""
        name = self.index.member(i)
        try:
            f = self._open(int(self.index.shard[i]))
            f.seek(int(self.index.offset[i]))
            data = f.read(int(self.index.size[i]))
        except OSError as e:
            raise AudioFileError(name, f"unreadable shard ({e})") from e
        if len(data) != self.index.size[i]:
            raise AudioFileError(name, f"truncated shard: read {len(data)} of {self.index.size[i]} bytes")
        return data

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        from .decode import clip_window, decode_bytes

        name = self.index.member(index)
        return decode_bytes(self.read_member(index), name, self.sample_rate, self.min_samples,
                            **clip_window(self, index)), name

    def _prepared_meta(self) -> dict:
        """``dataset.json`` written by ``prepare`` next to the first shard ({} if none)."""
        import json
        from pathlib import Path

        meta = Path(self.index.shards[0]).parent / "dataset.json"
        try:
            return json.loads(meta.read_text()) if meta.is_file() else {}
        except ValueError:
            return {}

    def _label(self, index: int) -> int | list[int]:
        labels = self.index.labels(index)
        if self.multilabel:
            return labels
        return labels[0] if labels else -1

    # ------------------------------------------------------------------------------------------ order
    def global_order(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order of all ``N`` sample ids ``(N,)`` int64 (steps 1-2 of the module doc)."""
        starts = self.index.shard_starts
        shards = epoch_order(len(starts) - 1, self.seed, epoch, shuffle=self.train)
        stream = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in shards]).astype(np.int64)
        if not self.train or self.shuffle_buffer <= 1:
            return stream
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x5B]))
        return shuffle_buffer(stream, self.shuffle_buffer, rng)

    def rank_order(self, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's sample ids for the epoch, ``(ceil(N / world_size),)`` int64 (step 3)."""
        return np.asarray(rank_share(self.global_order(epoch).tolist(), rank, world_size), dtype=np.int64)

    def batches_per_rank(self, local_batch: int, world_size: int = 1) -> int:
        return per_rank(len(self), world_size) // local_batch

    def problems(self) -> list[tuple[str, str]]:
        """``(shard:member, problem)`` found by the shard scan (``on_error="skip"``)."""
        return list(self.bad)

    def labels(self) -> torch.Tensor:
        return labels_tensor([self._label(i) for i in range(len(self))], self.num_classes, self.multilabel)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> StreamSubset:
        """The samples ``indices`` as a streaming source of their own (:class:`StreamSubset`)."""
        return StreamSubset(self, indices)

    def iter_batches(
        self,
        epoch: int,
        local_batch: int,
        start: int = 0,
        stop: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        worker: int = 0,
        num_workers: int = 1,
    ) -> Iterator[dict[str, Any]]:
        """Collated batches ``j = start + worker, start + worker + num_workers, ... < stop`` of this rank's
        epoch (``stop`` defaults to every full batch); see :func:`~maskspec_fast.data.base.collate`."""
        self.set_epoch(epoch)  # crops from (seed, epoch, index), as on the map-style path
        ids = self.rank_order(epoch, rank, world_size)
        return _batches_of(ids, local_batch, start, stop, worker, num_workers, self.batch)

    def batch(self, ids: Sequence[int], pool: np.ndarray | None = None) -> dict[str, Any]:
        """The collated batch of samples ``ids``: equal to ``collate([self[i] for i in ids])``, built faster.
        ``pool``: the sorted ids a bad clip's replacement may come from (a subset's own; default every clip).

        Why: at prepared-shard speed, copies dominate (measured in-process: ``torch.stack`` of the per-clip tensors
        took half the time). Here ``wave (B, clip_samples)`` is allocated once and PCM16 WAV members at the model
        rate are cropped as int16 and scaled straight into their row (``x = pcm / 32768``, the value of the decode
        path). Any other member, and any error, goes through ``self[i]`` (decoder, resampler, on_error policy).
        Inside a DataLoader worker the batch is allocated in shared memory, so sending it to the main process
        copies nothing (what torch's own ``default_collate`` does in workers).
        """
        from .decode import parse_pcm16_wav

        wave = _batch_buffer((len(ids), self.clip_samples))
        rows = wave.numpy()
        samples = []
        for r, i in enumerate(int(i) for i in ids):
            parsed = None
            if self.index.fields[i] == "wav":
                try:
                    parsed = parse_pcm16_wav(self.read_member(i))
                except AudioFileError:
                    parsed = None  # the slow path raises or replaces it
            if parsed is not None and parsed[1] == self.sample_rate and parsed[0].shape[1] == 1 \
                    and parsed[0].shape[0] >= max(self.min_samples or 1, 1):
                pcm = parsed[0][:, 0]
                n = pcm.shape[0]
                start = 0
                if n > self.clip_samples and self.train:  # the draw crop_or_pad makes for this (seed, epoch, index)
                    start = int(torch.randint(0, n - self.clip_samples + 1, (), generator=self._generator(i)).item())
                m = min(n - start, self.clip_samples)
                np.multiply(pcm[start : start + m], np.float32(1.0 / 32768.0), out=rows[r, :m], casting="unsafe")
                rows[r, m:] = 0.0
                samples.append({"label": self._label_tensor(self._label(i)), "path": self.index.member(i),
                                "index": i, "replaced": "", "replaced_reason": "", "padded": self.clip_samples - m})
            else:
                s = self.sample(i, pool)
                wave[r] = s["wave"]
                samples.append(s)
        return {
            "wave": wave,
            "label": torch.stack([s["label"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "path": [s["path"] for s in samples],
            "replaced": [(s["replaced"], s["replaced_reason"]) for s in samples if s["replaced"]],
            "padded": torch.tensor([int(s.get("padded", 0)) for s in samples], dtype=torch.long),
        }


def _batches_of(ids: np.ndarray, local_batch: int, start: int, stop: int | None, worker: int, num_workers: int,
                make_batch) -> Iterator[dict[str, Any]]:
    """Batches ``j = start + worker, start + worker + num_workers, ... < stop`` of a rank's ids ``(n,)``: batch
    ``j`` is ``make_batch(ids[j b : (j + 1) b])`` (``stop`` defaults to every full batch)."""
    full = len(ids) // local_batch
    stop = full if stop is None else min(int(stop), full)
    for j in range(start + worker, stop, num_workers):
        yield make_batch(ids[j * local_batch : (j + 1) * local_batch])


class StreamSubset(Subset):
    """The samples ``indices`` of a :class:`ShardStream` as a streaming source of their own.

    Epoch ``e``'s order is the parent's order of ``e`` restricted to these samples (so reading still moves through
    a few shards at a time), split over ranks and workers exactly as the parent splits its own; length, labels,
    batches per rank and bad-clip replacement are this subset's. Scan problems of the parent's shards are reported
    by the subset too (they belong to no clip of either).
    """

    streaming = True

    def problems(self) -> list[tuple[str, str]]:
        return self.parent.problems()

    def global_order(self, epoch: int) -> np.ndarray:
        """The parent's epoch order restricted to this subset's ids ``(len(self),)`` int64."""
        order = self.parent.global_order(epoch)
        return order[np.isin(order, self.ids)]

    def rank_order(self, epoch: int, rank: int = 0, world_size: int = 1) -> np.ndarray:
        return np.asarray(rank_share(self.global_order(epoch).tolist(), rank, world_size), dtype=np.int64)

    def batches_per_rank(self, local_batch: int, world_size: int = 1) -> int:
        return per_rank(len(self), world_size) // local_batch

    def iter_batches(self, epoch: int, local_batch: int, start: int = 0, stop: int | None = None, rank: int = 0,
                     world_size: int = 1, worker: int = 0, num_workers: int = 1) -> Iterator[dict[str, Any]]:
        self.parent.set_epoch(epoch)
        ids = self.rank_order(epoch, rank, world_size)
        return _batches_of(ids, local_batch, start, stop, worker, num_workers,
                           functools.partial(self.parent.batch, pool=self.ids))

    def __repr__(self) -> str:
        return f"StreamSubset({len(self)} of {self.parent!r})"


__all__ = ["ShardStream", "StreamSubset", "shuffle_buffer"]
