"""The package's data errors carried out of DataLoader workers as values, so they keep their type and message.

Why: a ``torch.utils.data.DataLoader`` worker that raises is re-raised in the main process as
``type(err)(text_with_the_worker_traceback)``; an error whose constructor takes other arguments
(:class:`~maskspec_fast.frontend.audio.AudioFileError` takes ``(path, problem)``) then becomes a plain
``RuntimeError`` holding a 60-line traceback, and the CLI's one-line report (exit 2) never happens. Here the worker
catches the errors the package documents (:data:`CARRIED`), returns them as a :class:`Failure` (pickled with the
error's own ``__reduce__``), and the main process raises the original object: the same type, path and problem
with ``workers=0``, the default and any other count.

* :class:`CarryErrors` wraps a map-style source for a DataLoader (``clip``: evaluation's never-substituting read);
* :func:`collate_or_failure` is the matching ``collate_fn``;
* :func:`raise_failure` is called on each batch the loader yields.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from torch.utils.data import Dataset

from ..frontend.audio import AudioFileError
from .base import DatasetError, collate

CARRIED: tuple[type[BaseException], ...] = (AudioFileError, DatasetError)


class Failure:
    """A documented error raised in a worker, carried to the main process as a value."""

    def __init__(self, error: BaseException):
        self.error = error

    def __reduce__(self):
        return (Failure, (self.error,))


class CarryErrors(Dataset):
    """``source[i]`` (or ``source.clip(i)`` with ``read="clip"``) with :data:`CARRIED` errors returned as
    :class:`Failure` values instead of raised (see the module doc)."""

    def __init__(self, source: Any, read: str = "item"):
        if read not in ("item", "clip"):
            raise ValueError(f"read must be 'item' or 'clip', got {read!r}")
        self.source, self.read = source, read

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.source.clip(index) if self.read == "clip" else self.source[index]
        except CARRIED as err:
            return Failure(err)


def collate_or_failure(batch: list[Any]) -> Any:
    """:func:`~maskspec_fast.data.base.collate`, or the batch's first :class:`Failure` when a sample failed."""
    for sample in batch:
        if isinstance(sample, Failure):
            return sample
    return collate(batch)


def raise_failure(batch: Any) -> Any:
    """``batch`` unchanged, or the carried error raised (with its original type and message)."""
    if isinstance(batch, Failure):
        raise batch.error
    return batch


def carried_iter(make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """Iterate ``make()`` (run inside a worker), yielding a :class:`Failure` and stopping on a :data:`CARRIED` error;
    for iterable sources whose batches are built in the worker."""
    try:
        yield from make()
    except CARRIED as err:
        yield Failure(err)


__all__ = ["CARRIED", "CarryErrors", "Failure", "carried_iter", "collate_or_failure", "raise_failure"]
