"""Data sets with one interface (:class:`AudioDataset`, sample dict documented in :mod:`maskspec_fast.data.base`):
procedural sounds, unlabeled folders, class folders, ESC-50 and AudioSet-style manifests, the layouts AudioSet is
held in (HDF5 of mp3 bytes, WebDataset tar shards streamed by :class:`ShardStream`, Hugging Face sets), the
official AudioSet and VGGSound CSV layouts (:class:`AudioSetSegments`, :class:`VGGSound`), and
:func:`build_dataset` for the CLI's ``--data kind:arg`` strings. ``python -m maskspec_fast.data prepare`` turns any
of them into training shards (:mod:`maskspec_fast.data.prepare`)."""

from .base import AudioDataset, DatasetError, FileDataset, collate
from .files import ESC50, AudioFolder, ClassFolders, Manifest
from .hdf5 import HDF5Audio
from .hf import HFAudio
from .official import AudioSetSegments, VGGSound
from .spec import build_dataset, parse_spec
from .stream import ShardStream
from .synthetic import SyntheticSounds

__all__ = [
    "ESC50",
    "AudioDataset",
    "AudioSetSegments",
    "AudioFolder",
    "ClassFolders",
    "DatasetError",
    "FileDataset",
    "HDF5Audio",
    "HFAudio",
    "Manifest",
    "ShardStream",
    "SyntheticSounds",
    "VGGSound",
    "build_dataset",
    "collate",
    "parse_spec",
]
