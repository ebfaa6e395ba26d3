"""Data sets with one interface (:class:`AudioDataset`, sample dict documented in :mod:`maskspec_fast.data.base`):
procedural sounds, unlabeled folders, class folders, ESC-50 and AudioSet-style manifests, and
:func:`build_dataset` for the CLI's ``--data kind:arg`` strings."""

from .base import AudioDataset, DatasetError, FileDataset, collate
from .files import ESC50, AudioFolder, ClassFolders, Manifest
from .spec import build_dataset, parse_spec
from .synthetic import SyntheticSounds

__all__ = [
    "ESC50",
    "AudioDataset",
    "AudioFolder",
    "ClassFolders",
    "DatasetError",
    "FileDataset",
    "Manifest",
    "SyntheticSounds",
    "build_dataset",
    "collate",
    "parse_spec",
]
