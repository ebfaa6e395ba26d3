"""``hf:PATH``: a Hugging Face ``datasets`` audio set on disk, read with pyarrow (the ``[hf]`` extra).

Accepted layouts (facts from the ``datasets`` docs and files):

* ``Dataset.save_to_disk`` folder: ``state.json`` (``_data_files``: the Arrow files, IPC stream format),
  ``dataset_info.json`` (``features``); a ``DatasetDict`` folder (``dataset_dict.json``) holds one such folder per
  split (option ``split=``, default ``train``);
* parquet: one ``.parquet`` file or a folder of them (recursively, sorted); the features are in the schema
  metadata under ``huggingface`` (``{"info": {"features": ...}}``). A folder as the hub lays it out holds several
  splits, read one at a time (option ``split=``), never merged: a file's split is named by ``<split>-NNNNN-of-NNNNN``
  (``data/train-00000-of-00001.parquet``, what ``push_to_hub`` writes), else by a file or folder named for a split
  keyword (``train``, ``validation``/``valid``/``val``/``dev``, ``test``/``eval``; ``test.parquet``,
  ``test/0000.parquet``); files with no split name are the ``train`` split. Without ``split=``: ``train``, or the
  only split there is; an unknown split is an error listing the splits found.

The audio column (option ``audio=``; default: the feature of type ``Audio``, else the first struct column with
a ``bytes`` field) holds ``{"bytes": file bytes, "path": name}``; a row without bytes is read from its ``path``.
The label column (option ``label=``; default: a ``ClassLabel`` feature or a sequence of them, else a column
named ``label`` / ``labels``) gives a single-label set (int, -1 for none) or a multi-label one (list); class
names come from the ``ClassLabel`` feature; a column of strings (no ``ClassLabel``) is mapped to indices in the
sorted order of its distinct values (numeric order when all are integers), as manifests and shards map label
names. Without a label column the set is unlabeled (pre-training).
Arrow files are memory-mapped; parquet is read one row group at a time (the last one is cached per process).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..frontend.audio import AudioFileError, load_audio
from .base import AudioDataset, DatasetError
from .files import _sort_names, walk_files
from .labels import decide_multilabel

# datasets' split keywords (its data_files patterns) and the split each one names
_SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test", "eval": "test",
                "evaluation": "test"}
_HUB_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}$")  # data/train-00000-of-00001.parquet
_WORD_STEM = re.compile(r"^(?P<word>[A-Za-z]+)(?:[-._ ]*\d+)*$")  # test.parquet, train-0.parquet


def split_of(rel: Path) -> str | None:
    """The split a parquet file belongs to, from its path relative to the data set's folder (module doc), or None
    when it names none."""
    m = _HUB_SHARD.match(rel.stem)
    if m:
        return _SPLIT_WORDS.get(m["split"].lower(), m["split"])
    m = _WORD_STEM.match(rel.stem)
    if m and m["word"].lower() in _SPLIT_WORDS:
        return _SPLIT_WORDS[m["word"].lower()]
    for folder in reversed(rel.parts[:-1]):
        if folder.lower() in _SPLIT_WORDS:
            return _SPLIT_WORDS[folder.lower()]
    return None


def parquet_split(root: Path, split: str | None) -> list[Path]:
    """The parquet files of ``split`` under the folder ``root`` (module doc); a one-line DatasetError for an unknown
    split, listing the splits found."""
    groups: dict[str, list[Path]] = {}
    for f in walk_files(root, (".parquet",)):
        groups.setdefault(split_of(f.relative_to(root)) or "train", []).append(f)
    if not groups:
        return []
    if split is None:
        if "train" not in groups and len(groups) > 1:
            raise DatasetError(f"hf: {root} holds the splits {', '.join(sorted(groups))} and no 'train': choose one "
                               "with :split=NAME")
        split = "train" if "train" in groups else next(iter(groups))
    want = _SPLIT_WORDS.get(split.lower(), split)
    if want not in groups:
        raise DatasetError(f"hf: {root} has no split {split!r} (splits found: {', '.join(sorted(groups))})")
    return groups[want]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DatasetError(f"hf: data sets need pyarrow: pip install 'maskspec_fast[hf]' ({e})") from e
    return pa, pq


def _inner(feature):
    """The element feature of a sequence feature (``Sequence``/``List``/``LargeList`` or the ``[f]`` form)."""
    if isinstance(feature, list) and feature:
        return feature[0]
    if isinstance(feature, dict) and feature.get("_type") in ("Sequence", "List", "LargeList"):
        return feature.get("feature")
    return None


class HFAudio(AudioDataset):
    """A ``datasets`` audio set (module doc) as an :class:`AudioDataset`."""

    label_sources = "a ClassLabel feature, else a column named 'label' / 'labels' (:label=COLUMN picks one)"

    def __init__(
        self,
        path: str | os.PathLike,
        clip_seconds: float = 10.0,
        audio: str | None = None,
        label: str | None = None,
        split: str | None = None,
        min_samples: int | None = None,
        multilabel: bool | None = None,
        **kwargs,
    ):
        super().__init__(clip_seconds=clip_seconds, **kwargs)
        from ..frontend.audio import MIN_SAMPLES

        pa, pq = _pyarrow()
        root = Path(path)
        if (root / "dataset_dict.json").is_file():
            splits = sorted(d.name for d in root.iterdir() if (d / "state.json").is_file())
            split = split or "train"
            if split not in splits:
                raise DatasetError(f"hf: {root} has no split {split!r} (splits found: {', '.join(splits)})")
            root = root / split
        self.root = root
        self._cache: dict = {}
        self.min_samples = MIN_SAMPLES if min_samples is None else int(min_samples)
        self.pieces: list[tuple[str, str, int]] = []  # (kind, file, row group) ; kind: "arrow" | "parquet"
        sizes: list[int] = []
        features: dict = {}
        if (root / "state.json").is_file():
            state = json.loads((root / "state.json").read_text())
            info = root / "dataset_info.json"
            features = json.loads(info.read_text()).get("features", {}) if info.is_file() else {}
            for entry in state.get("_data_files", []):
                f = str(root / entry["filename"])
                with pa.memory_map(f) as src:
                    sizes.append(pa.ipc.open_stream(src).read_all().num_rows)
                self.pieces.append(("arrow", f, 0))
            schema = self._table(0).schema if self.pieces else None
        else:
            files = [root] if root.is_file() else parquet_split(root, split) if root.is_dir() else []
            if not files:
                raise DatasetError(f"hf: {path} is neither a save_to_disk folder (state.json) nor parquet files")
            schema = None
            for f in files:
                try:
                    meta = pq.ParquetFile(str(f))
                except Exception as e:  # pyarrow raises ArrowInvalid for a damaged / non-parquet file
                    raise DatasetError(f"hf: {f} is not a readable parquet file ({e})") from e
                schema = schema or meta.schema_arrow
                for g in range(meta.num_row_groups):
                    self.pieces.append(("parquet", str(f), g))
                    sizes.append(meta.metadata.row_group(g).num_rows)
            hf_meta = (schema.metadata or {}).get(b"huggingface")
            if hf_meta:
                features = json.loads(hf_meta).get("info", {}).get("features", {})
        if schema is None or not sum(sizes):
            raise DatasetError(f"hf: {path} holds no rows")
        self.audio_col = audio or self._find_audio(features, schema)
        self.label_col = label if label is not None else self._find_label(features, schema)
        if self.audio_col not in schema.names:
            raise DatasetError(f"hf: {path} has no column {self.audio_col!r} (columns: {schema.names})")
        if self.label_col and self.label_col not in schema.names:
            raise DatasetError(f"hf: {path} has no column {self.label_col!r} (columns: {schema.names})")
        feat = features.get(self.label_col, {}) if self.label_col else {}
        elem = _inner(feat)
        # cells stored as lists (a Sequence feature or a list column); single/multi-label is decided below
        self._list_column = elem is not None or (bool(self.label_col) and
                                                 pa.types.is_list(schema.field(self.label_col).type))
        names = (elem or feat or {}).get("names") if isinstance(elem or feat, dict) else None
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._lookup: dict[str, int] | None = None  # label text -> index, for a column of strings
        # the label column, read once: for the names when no ClassLabel feature gives them, and for the rule
        cells = [v for k in range(len(self.pieces)) for v in self._column(k, self.label_col)] if self.label_col else []
        if names is None and self.label_col:
            flat = [x for v in cells for x in (v if isinstance(v, list) else [v]) if x is not None]
            if any(isinstance(x, str) for x in flat):  # names without a ClassLabel feature
                names = _sort_names(str(x).strip() for x in flat if str(x).strip())
                self._lookup = {n: i for i, n in enumerate(names)}
            else:
                names = [str(c) for c in range(int(max(flat)) + 1)] if flat else []
        self.class_names = list(names or [])
        if self.label_col:  # the one rule (data.labels.decide_multilabel), over the cells as they are stored
            counts = [len({x for x in (v if isinstance(v, list) else [v]) if x is not None and str(x).strip() != ""})
                      for v in cells]
            self.multilabel = decide_multilabel(counts, multilabel, f"hf:{path}")
        else:
            self.multilabel = bool(multilabel) if multilabel is not None else self._list_column

    # --------------------------------------------------------------------------------------- columns
    @staticmethod
    def _find_audio(features: dict, schema) -> str:
        for name, f in features.items():
            if isinstance(f, dict) and f.get("_type") == "Audio":
                return name
        import pyarrow as pa

        for fld in schema:
            if pa.types.is_struct(fld.type) and fld.type.get_field_index("bytes") >= 0:
                return fld.name
        raise DatasetError(f"hf: no audio column (an Audio feature or a struct with 'bytes'); columns: {schema.names}")

    @staticmethod
    def _find_label(features: dict, schema) -> str | None:
        for name, f in features.items():
            elem = _inner(f)
            if (isinstance(f, dict) and f.get("_type") == "ClassLabel") or (
                isinstance(elem, dict) and elem.get("_type") == "ClassLabel"
            ):
                return name
        return next((n for n in ("label", "labels") if n in schema.names), None)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def _table(self, k: int):
        """The Arrow table of piece ``k`` (memory-mapped Arrow file, or one parquet row group; cached)."""
        pa, pq = _pyarrow()
        key = (os.getpid(), k)
        t = self._cache.get(key)
        if t is None:
            kind, f, g = self.pieces[k]
            if kind == "arrow":
                t = pa.ipc.open_stream(pa.memory_map(f)).read_all()
            else:
                t = pq.ParquetFile(f).read_row_group(g)
                self._cache = {kk: v for kk, v in self._cache.items() if self.pieces[kk[1]][0] == "arrow"}
            self._cache[key] = t
        return t

    def _column(self, k: int, col: str) -> list:
        return self._table(k).column(col).to_pylist()

    def _locate(self, index: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.starts, index, side="right") - 1)
        return k, int(index - self.starts[k])

    def __len__(self) -> int:
        return int(self.starts[-1])

    # ---------------------------------------------------------------------------------------- samples
    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        from .decode import clip_window, decode_bytes

        k, j = self._locate(index)
        cell = self._table(k).column(self.audio_col)[j].as_py() or {}
        name = f"{self.pieces[k][1]}:{j}:{cell.get('path') or ''}"
        data = cell.get("bytes")
        if data:
            return decode_bytes(data, name, self.sample_rate, self.min_samples, **clip_window(self, index)), name
        p = cell.get("path")
        if not p:
            raise AudioFileError(name, "audio cell has neither bytes nor a path")
        full = p if os.path.isabs(p) else str(self.root / p)
        return load_audio(full, self.sample_rate, min_samples=self.min_samples, **clip_window(self, index)), full

    def _label(self, index: int) -> int | list[int]:
        if not self.label_col:
            return [] if self.multilabel else -1
        k, j = self._locate(index)
        v = self._table(k).column(self.label_col)[j].as_py()
        values = (v or []) if self._list_column else [v]
        if self.multilabel:
            return sorted({c for c in (self._index(x) for x in values) if c >= 0})
        return self._index(values[0] if values else None)

    def _index(self, value) -> int:
        """A label cell's class index (-1 for none): the int itself, or a name's place in the sorted names."""
        if value is None:
            return -1
        if self._lookup is not None:
            return self._lookup.get(str(value).strip(), -1)  # "" is no label; every other name is in the lookup
        return int(value)


__all__ = ["HFAudio"]
