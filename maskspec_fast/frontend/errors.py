"""The error every input path raises for a file it cannot use (its own module: the decoders below ``audio`` raise
it too, and import nothing above them)."""
from __future__ import annotations

import os
from collections.abc import Sequence

# how a traceback's last line names this class (what a message-only rebuild strips, with its module path)
_NAMED = "AudioFileError: "


class AudioFileError(ValueError):
    """An audio file that cannot be used, on every input path (reference loader, DALI, shard readers).

    ``path`` names the file (``paths`` all suspects when a batch failed as a whole), ``problem`` says why; both
    are in the message.
    """

    def __init__(self, path: str | os.PathLike, problem: str | None = None, paths: Sequence[str] | None = None):
        if problem is None:  # rebuilt from a message alone (e.g. torch's re-raise of a worker error): keep it whole
            last = str(path).rstrip().rpartition("\n")[2]
            path, _, problem = last.partition(_NAMED)[2 if _NAMED in last else 0].partition(": ")
        self.path = str(path)
        self.problem = problem
        self.paths = list(paths) if paths is not None else [self.path]
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.problem, self.paths))


__all__ = ["AudioFileError"]
