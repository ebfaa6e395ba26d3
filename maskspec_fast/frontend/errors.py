"""The error every input path raises for a file it cannot use (its own module: the decoders below ``audio`` raise
it too, and import nothing above them)."""
from __future__ import annotations

import os
from collections.abc import Sequence


class AudioFileError(ValueError):
    """An audio file that cannot be used, on every input path (reference loader, DALI, shard readers).

    ``path`` names the file (``paths`` all suspects when a batch failed as a whole), ``problem`` says why; both
    are in the message.
    """

    def __init__(self, path: str | os.PathLike, problem: str, paths: Sequence[str] | None = None):
        self.path = str(path)
        self.problem = problem
        self.paths = list(paths) if paths is not None else [self.path]
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.problem, self.paths))


def worker_error(exc: BaseException, names: Sequence[str] = ("AudioFileError", "DatasetError")) -> str | None:
    """The one-line message of an error of a type in ``names`` raised in a DataLoader worker process, or None.

    Why: torch re-raises a worker's exception in the main process by calling its type with the whole formatted
    traceback as the only argument; a type that takes other arguments (AudioFileError takes ``path, problem``)
    comes back as a ``RuntimeError`` whose message is that traceback. Its last line is the original message.
    """
    text = str(exc)
    head = text.split("\n", 1)[0]
    if not head.startswith("Caught ") or " in DataLoader worker" not in head:
        return None
    if head[len("Caught ") :].split(" ", 1)[0] not in names:
        return None
    last = [ln for ln in text.splitlines() if ln.strip()][-1].strip()
    _, sep, message = last.partition(": ")
    return message if sep else last


__all__ = ["AudioFileError", "worker_error"]
