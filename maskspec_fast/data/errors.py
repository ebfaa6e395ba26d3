"""The data layer's own error (its lowest module, so that every data module can raise it without a cycle)."""
from __future__ import annotations


class DatasetError(ValueError):
    """A data set that cannot be built (missing / malformed index file, missing files, no audio found, a bad spec
    option): the message is one line naming the set and the problem."""


__all__ = ["DatasetError"]
