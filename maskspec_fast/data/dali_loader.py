"""The DALI data loader: a data set's files -> log-mel batches on the training device, through the pipeline graph
of :mod:`maskspec_fast.frontend.dali` (see its docstring for the graph and the design choices).

What the loader adds to the graph: the epoch order and this process's share of it (the package's one ordering,
:mod:`maskspec_fast.data.order`, so the DALI path gives each rank the same clips as the DataLoader path), the
bad-file policy (raise :class:`~maskspec_fast.frontend.audio.AudioFileError` naming the file, or replace it and
record it), labels that travel with their audio, and the mel/log step (:meth:`LogMel.from_power`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..frontend.audio import AudioFileError
from ..frontend.dali import (
    _require_dali,
    build_logmel_pipeline,
    file_info,
    full_decode_error,
    header_check,
    is_decode_error,
    needs_transcode,
)
from ..frontend.logmel import LogMel, MelSettings, num_frames
from .order import epoch_order, rank_share


def _decode_error(problem: str, paths: Sequence[str]) -> AudioFileError:
    return AudioFileError(paths[0] if len(paths) == 1 else ", ".join(paths), problem, paths)


class DaliAudioLoader:
    """Iterate ``{"spec": (B, n_mels, T) fp32 on device, "label": (B,) or (B, C), "index": (B,) int64}``.

    Args:
        items: ``(path, label)`` pairs; ``label`` an int (-> int64 ``(B,)``), a list of class indices with
            ``num_classes`` given (-> multi-hot float32 ``(B, C)``), or a fixed-length vector such as a multi-hot
            array (-> float32 ``(B, C)``).
        batch_size: samples per batch; the last batch of an epoch may be smaller (``drop_last=False``).
        clip_seconds: clip length; ``L = round(clip_seconds * 32000)`` samples, ``T = 1 + (L - 1) // 320``.
        train: random crop (and shuffling, unless ``shuffle`` says otherwise; mel jitter if given); evaluation
            crops deterministically from the start and pads short clips with zeros at the end.
        seed: with the epoch (:meth:`set_epoch`, advanced automatically after each full pass) fixes the order
            and the crops.
        shard_id, num_shards: this process's share: positions ``shard_id, shard_id + num_shards, ...`` of each
            epoch's order (:func:`~maskspec_fast.data.order.rank_share`, unpadded); the shares partition it.
        device: ``"cpu"`` (DALI CPU backend) or ``"cuda"`` (DALI GPU operators, tensors on the current device).
        skip_bad_files: replace undecodable files with the next good one of the shard (recorded in ``skipped``)
            instead of raising :class:`~maskspec_fast.frontend.audio.AudioFileError`.
        validate: header-check every file once up front (``soundfile.info``, or opening the container for FFmpeg).
        fmin_jitter, fmax_jitter: MaskSpec's per-batch mel-band jitter in training (see :class:`LogMel`).
    """

    def __init__(
        self,
        items: Sequence[tuple[str, Any]],
        batch_size: int,
        clip_seconds: float = 10.0,
        train: bool = False,
        seed: int = 0,
        shard_id: int = 0,
        num_shards: int = 1,
        device: str = "cpu",
        num_threads: int = 2,
        skip_bad_files: bool = False,
        *,
        shuffle: bool | None = None,
        drop_last: bool = False,
        validate: bool = True,
        fmin_jitter: float = 0.0,
        fmax_jitter: float = 0.0,
        settings: MelSettings | None = None,
        quality: float = 50.0,
        prefetch_queue_depth: int = 2,
        num_classes: int | None = None,
    ):
        _require_dali()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id}, num_shards={num_shards}")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' asked for, but torch sees no CUDA device")
        self.items = [(os.fspath(p), y) for p, y in items]
        if not self.items:
            raise ValueError("DaliAudioLoader needs at least one item")
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.shard_id, self.num_shards = shard_id, num_shards
        self.device, self.num_threads = device, num_threads
        self.skip_bad_files, self.drop_last = skip_bad_files, drop_last
        self.shuffle = train if shuffle is None else shuffle
        self.settings = settings or MelSettings()
        self.quality, self.prefetch_queue_depth = quality, prefetch_queue_depth
        self.num_classes = num_classes
        self.clip_samples = int(round(clip_seconds * self.settings.sample_rate))
        self.frames = num_frames(self.clip_samples, self.settings.hop_length)
        self.logmel = LogMel(self.settings, fmin_jitter, fmax_jitter).to(self._torch_device()).train(train)
        self.skipped: list[tuple[str, str]] = []
        self.epoch = 0
        self._bad: dict[str, str] = {}
        self._formats: dict[str, str | None] = {}
        self._rates: dict[str, int] = {}
        self._labels_as_vectors = not isinstance(self.items[0][1], (int, np.integer))
        if validate:
            self._validate()

    # ----------------------------------------------------------------------------------------------- setup
    def _torch_device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.device == "cuda" else torch.device("cpu")

    def _validate(self) -> None:
        def check(path: str) -> tuple[str, str | None, Any]:
            reason = header_check(path)
            return path, reason, None if reason else file_info(path)

        paths = sorted({p for p, _ in self.items})
        with ThreadPoolExecutor(max_workers=max(1, self.num_threads * 2)) as pool:
            for path, reason, info in pool.map(check, paths):
                if info is not None:
                    self._formats[path], self._rates[path] = info
                if reason is not None:
                    self._mark_bad(path, reason)

    def _mark_bad(self, path: str, reason: str) -> None:
        if not self.skip_bad_files:
            raise _decode_error(f"cannot decode: {reason}", [path])
        if path not in self._bad:
            self._bad[path] = reason
            self.skipped.append((path, reason))

    # ------------------------------------------------------------------------------------------- ordering
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and crops) the next iteration produces."""
        self.epoch = int(epoch)

    def shard_indices(self, epoch: int | None = None) -> np.ndarray:
        """Item indices this shard reads in ``epoch`` (before bad-file replacement)."""
        order = epoch_order(len(self.items), self.seed, self.epoch if epoch is None else epoch, self.shuffle)
        return np.asarray(rank_share(order, self.shard_id, self.num_shards, pad=False), dtype=np.int64)

    def __len__(self) -> int:
        n = len(range(self.shard_id, len(self.items), self.num_shards))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _replace_bad(self, order: np.ndarray) -> np.ndarray:
        """Each bad item -> the next good item of the shard (cyclically); any good item if the shard has none."""
        good = np.array([self.items[i][0] not in self._bad for i in order], dtype=bool)
        if good.all():
            return order
        pool = order if good.any() else np.array([i for i, (p, _) in enumerate(self.items) if p not in self._bad])
        if pool.size == 0:
            raise _decode_error("no decodable audio file left", sorted(self._bad))
        if not good.any():
            return np.resize(pool, order.size)
        out = order.copy()
        n = order.size
        for j in np.flatnonzero(~good):
            k = next(k for k in range(1, n + 1) if good[(j + k) % n])
            out[j] = order[(j + k) % n]
        return out

    # ------------------------------------------------------------------------------------------ iteration
    def _build(self, order: np.ndarray, epoch: int, start: int):
        files = [self.items[i][0] for i in order]
        transcode = [needs_transcode(p, self._formats.get(p)) for p in files]
        rates = [self._rates[p] for p in files] if all(p in self._rates for p in files) else None
        # A different seed per (seed, epoch, shard, restart point) keeps random crops reproducible.
        pseed = int(np.random.default_rng([self.seed, epoch, self.shard_id, start]).integers(0, 2**31 - 1))
        return build_logmel_pipeline(
            files,
            batch_size=self.batch_size,
            clip_samples=self.clip_samples,
            train=self.train,
            seed=pseed,
            device=self.device,
            num_threads=self.num_threads,
            transcode=transcode,
            rates=rates,
            settings=self.settings,
            quality=self.quality,
            prefetch_queue_depth=self.prefetch_queue_depth,
        )

    def _labels(self, idx: np.ndarray) -> torch.Tensor:
        if not self._labels_as_vectors:
            return torch.as_tensor([int(self.items[i][1]) for i in idx], dtype=torch.int64)
        if self.num_classes is not None:  # lists of class indices -> multi-hot (B, C)
            hot = torch.zeros(len(idx), self.num_classes, dtype=torch.float32)
            for row, i in enumerate(idx):
                hot[row, torch.as_tensor(list(self.items[i][1]), dtype=torch.int64)] = 1.0
            return hot
        return torch.stack([torch.as_tensor(np.asarray(self.items[i][1]), dtype=torch.float32) for i in idx])

    @classmethod
    def from_dataset(cls, dataset: Any, batch_size: int, **kwargs: Any) -> DaliAudioLoader:
        """From a file-based :class:`~maskspec_fast.data.interfaces.MapSource` (``files()``, ``num_classes``,
        ``multilabel``); kwargs as ``__init__``."""
        files = dataset.files()
        if files is None:
            raise ValueError(f"DALI reads files; {type(dataset).__name__} makes its clips in Python")
        if dataset.multilabel:
            kwargs.setdefault("num_classes", dataset.num_classes)
        return cls(files, batch_size, **kwargs)

    def _to_torch(self, tensor_list) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        b = len(tensor_list)
        out = torch.empty((b, self.settings.n_fft // 2 + 1, self.frames), dtype=torch.float32, device=self._torch_device())
        stream = torch.cuda.current_stream() if self.device == "cuda" else None
        feed_ndarray(tensor_list.as_tensor(), out, cuda_stream=stream)
        return out

    def _culprits(self, order: np.ndarray, start: int) -> list[tuple[str, str]]:
        """Files in the window a failing pipeline may have been decoding (current batch + prefetch)."""
        stop = min(order.size, start + (self.prefetch_queue_depth + 2) * self.batch_size)
        paths = dict.fromkeys(self.items[i][0] for i in order[start:stop])
        found = [(p, r) for p in paths if (r := full_decode_error(p)) is not None]
        return found or [(p, "DALI failed to decode it") for p in paths]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self.epoch
        base = self.shard_indices(epoch)
        n_out = len(self) * self.batch_size if self.drop_last else base.size
        done = 0  # samples already returned this epoch
        restarts = 0
        while done < n_out:
            order = self._replace_bad(base)
            first = done  # the pipeline reads order[first:]
            pipe = self._build(order[first:], epoch, first)
            try:
                while done < n_out:
                    try:
                        power, pos = pipe.run()
                    except StopIteration:
                        break
                    except RuntimeError as exc:
                        if not is_decode_error(exc):
                            raise
                        culprits = self._culprits(order, done)
                        if not self.skip_bad_files:
                            raise _decode_error(
                                f"DALI failed to decode ({culprits[0][1]}); first error: "
                                f"{str(exc).splitlines()[-1] if str(exc) else exc!r}",
                                [p for p, _ in culprits],
                            ) from exc
                        restarts += 1
                        if restarts > len(self.items):
                            raise
                        for p, reason in culprits:
                            self._mark_bad(p, reason)
                        break  # rebuild from `done` with the replacements
                    take = min(self.batch_size, n_out - done)  # drop the reader's pad-by-repetition
                    positions = np.asarray(pos.as_array()).reshape(-1)[:take].astype(np.int64) + first
                    idx = order[positions]
                    power_t = self._to_torch(power)[:take]
                    spec = self.logmel.from_power(power_t)
                    done += take
                    yield {"spec": spec, "label": self._labels(idx).to(spec.device), "index": torch.from_numpy(idx)}
            finally:
                del pipe
        self.epoch = epoch + 1


__all__ = ["DaliAudioLoader"]
