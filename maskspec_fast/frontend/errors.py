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


__all__ = ["AudioFileError"]
