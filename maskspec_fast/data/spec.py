"""``build_dataset("kind:arg[:key=value...]")``: the data sets from one string (the CLI's ``--data``).

    synthetic:2000[:seed=3][:labeled=0]      SyntheticSounds(num_clips=2000, ...)
    folder:/path/to/audio                    AudioFolder (unlabeled, for pre-training)
    classes:/path/to/root                    ClassFolders (one sub-folder per class)
    esc50:/path/to/ESC-50:folds=1,2,3        ESC50
    manifest:/path/to/train.csv              Manifest (CSV or JSON lines, multi-label)
    hdf5:/as/balanced.h5,/as/unbal.h5        HDF5Audio (PaSST / MaskSpec AudioSet HDF5 of mp3 bytes)
    webdataset:/s/shard-{000000..000999}.tar ShardStream (tar shards, streamed; :shuffle_buffer=1000)
    hf:/path/to/saved_dataset                HFAudio (datasets.save_to_disk folder or parquet files)
    audioset:/as/balanced_train_segments.csv:audio=/as/audio   AudioSetSegments (official CSVs + downloads)
    vggsound:/vgg/vggsound.csv:video=/vgg/video:split=train     VGGSound (official CSV + mp4 videos)

Options after the argument are ``key=value`` separated by ``:``. Each kind declares its options: the keyword
parameters of its constructor (and of the base classes it passes ``**kwargs`` to), typed by their annotations
(:mod:`maskspec_fast.data.options`). An unknown key or a value of the wrong type is a :class:`DatasetError` naming the
spec, the option and the known options. Keyword arguments of the call (e.g. ``clip_seconds``, ``train``, ``seed``,
``on_error``) are passed to the constructor; options in the string win.
A path may itself contain ``:``: only trailing ``:key=value`` parts are treated as options.
"""

from __future__ import annotations

import re
from typing import Any

from .base import AudioDataset, DatasetError
from .files import ESC50, AudioFolder, ClassFolders, Manifest
from .hdf5 import HDF5Audio
from .hf import HFAudio
from .official import AudioSetSegments, VGGSound
from .options import check_options
from .stream import ShardStream
from .synthetic import SyntheticSounds

KINDS = {
    "synthetic": SyntheticSounds,
    "folder": AudioFolder,
    "classes": ClassFolders,
    "esc50": ESC50,
    "manifest": Manifest,
    "hdf5": HDF5Audio,
    "webdataset": ShardStream,
    "hf": HFAudio,
    "audioset": AudioSetSegments,
    "vggsound": VGGSound,
}
_OPTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _value(key: str, text: str) -> Any:
    low = text.strip().lower()
    if key == "folds" or (("," in text) and all(re.fullmatch(r"-?\d+", t.strip()) for t in text.split(","))):
        return tuple(int(t) for t in text.split(",") if t.strip())
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def split_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``"esc50:/data/ESC-50:folds=1,2"`` -> ``("esc50", "/data/ESC-50", {"folds": "1,2"})`` (option values as text)."""
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r} in {spec!r}; expected one of {', '.join(KINDS)}")
    if not sep or not rest:
        raise ValueError(
            f"data spec {spec!r} lacks its argument after '{kind}:' (e.g. {kind}:{_EXAMPLE[kind]})"
        )
    parts = rest.split(":")
    opts: dict[str, str] = {}
    while len(parts) > 1 and _OPTION.match(parts[-1]):
        key, _, val = parts.pop().partition("=")
        if key in opts:
            raise DatasetError(f"{spec}: option {key!r} is given twice")
        opts[key] = val
    return kind, ":".join(parts), dict(reversed(opts.items()))


def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"esc50:/data/ESC-50:folds=1,2"`` -> ``("esc50", "/data/ESC-50", {"folds": (1, 2)})`` (values guessed from
    their text; :func:`build_dataset` converts them by the kind's declared option types instead)."""
    kind, arg, raw = split_spec(spec)
    return kind, arg, {key: _value(key, val) for key, val in raw.items()}


_EXAMPLE = {
    "synthetic": "2000",
    "folder": "/path/to/audio",
    "classes": "/path/to/root",
    "esc50": "/path/to/ESC-50:folds=1,2,3,4",
    "manifest": "/path/to/train.csv",
    "hdf5": "/data/balanced_train.h5,/data/unbalanced_train.h5",
    "webdataset": "/data/shards/shard-{000000..000999}.tar",
    "hf": "/data/audioset_hf",
    "audioset": "/data/balanced_train_segments.csv:audio=/data/audio",
    "vggsound": "/data/vggsound.csv:video=/data/video:split=train",
}


def build_dataset(spec: str, **kwargs: Any) -> AudioDataset:
    """Build a data set from a spec string (see module doc); ``kwargs`` go to the constructor."""
    kind, arg, raw = split_spec(spec)
    opts = check_options(KINDS[kind], spec, raw)
    kwargs = {**kwargs, **opts}
    if kind == "synthetic":
        try:
            num = int(arg)
        except ValueError:
            raise ValueError(f"synthetic:N needs a clip count, got {arg!r} in {spec!r}") from None
        return SyntheticSounds(num, **kwargs)
    return KINDS[kind](arg, **kwargs)


def require_labels(dataset: AudioDataset, spec: str) -> None:
    """Raise a one-line :class:`DatasetError` when ``dataset`` has no classes (fine-tuning and evaluation need
    them), naming the spec and where its kind looks for labels (``label_sources`` of the set's class)."""
    if dataset.num_classes >= 1:
        return
    where = dataset.label_sources
    raise DatasetError(f"{spec}: no labels found (looked for {where}); fine-tuning needs a labelled set")


__all__ = ["KINDS", "build_dataset", "parse_spec", "require_labels", "split_spec"]
