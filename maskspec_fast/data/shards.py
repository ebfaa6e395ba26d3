"""The index of a set of WebDataset tar shards: where every sample's audio member lies, and its labels.

WebDataset conventions (webdataset docs): a shard is a plain tar; consecutive members that share a key form one
sample, where ``key, field = base_plus_ext(member name)`` (the key is the name up to the first dot of its last
path component, the field is the rest: ``"a/Y--x.flac" -> ("a/Y--x", "flac")``); shard lists are brace patterns
(``shard-{000000..000999}.tar``, several patterns joined by ``::``). A sample here is one audio member
(``flac``, ``wav``, ``mp3``, ``ogg``, or any FFmpeg reads: ``m4a``, ``mp4``, ``webm``, ``opus``...) plus its labels: a ``cls`` member (webdataset's convention: the class index as
text, e.g. ``3``) and/or a ``json`` member whose ``labels`` (or ``label``, ``cls``) are class indices or class
names; both are read (their union). A member that is not a regular file (a symbolic or hard link, a device) has
no bytes in the shard: it is a problem like any other (below), never silently dropped.

The scan reads tar headers only (plus the small json members), so a sample's audio can later be read by offset
from any process: this is what lets the streaming source give each rank and DataLoader worker exactly its
samples, and resume mid-epoch without decoding what was already used.

Bad input found by the scan (a missing shard, a truncated tar, a sample without audio, a label that is not in
the class list) raises :class:`DatasetError` naming the shard and the member; with ``on_error="skip"`` the
complete samples are kept and each problem is listed in ``bad`` as ``(shard:member, problem)``.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import DatasetError

# libsndfile's first (prepared shards), then every extension FFmpeg reads (frontend.constants.FFMPEG_EXTENSIONS)
AUDIO_FIELDS = ("flac", "wav", "mp3", "ogg", "m4a", "mp4", "m4v", "mov", "3gp", "aac", "webm", "mkv", "mka", "opus",
                "oga", "aiff", "aif", "wma", "asf", "ac3", "avi", "flv", "wv", "caf", "amr")
JSON_LABEL_KEYS = ("labels", "label", "cls")
LABEL_SOURCES = "`.cls` members (a class index as text) and the 'labels' / 'label' / 'cls' keys of `.json` members"
_KIND = {tarfile.SYMTYPE: "symbolic link", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
         tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo"}


def expand_shards(pattern: str | Sequence[str]) -> list[str]:
    """Shard paths of a brace pattern (``::`` joins several; a list is taken as is), by webdataset's rules."""
    try:
        from webdataset.shardlists import expand_urls
    except ImportError as e:
        raise DatasetError(f"webdataset: shards need the webdataset package: pip install webdataset ({e})") from e
    urls = expand_urls(pattern) if isinstance(pattern, str) else [str(p) for p in pattern]
    if not urls:
        raise DatasetError(f"webdataset: the pattern {pattern!r} names no shard")
    return urls


def split_key(name: str) -> tuple[str, str]:
    """``(key, field)`` of a member name, webdataset's ``base_plus_ext``."""
    from webdataset.tariterators import base_plus_ext

    key, ext = base_plus_ext(name)
    return (key or name), (ext or "")


def read_class_list(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line) or an AudioSet ``class_labels_indices.csv``
    (``index,mid,display_name``: the ``mid`` column, in ``index`` order)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"webdataset: class list {p} not found")
    lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    if lines and lines[0].lower().replace(" ", "").startswith("index,mid"):
        import csv

        rows = list(csv.DictReader(lines))
        return [r["mid"].strip() for r in sorted(rows, key=lambda r: int(r["index"]))]
    return lines


@dataclass
class ShardIndex:
    """Samples of all shards, in shard order then tar order; arrays are ``(N,)`` unless noted.

    ``shard`` int32 (position in ``shards``), ``offset`` / ``size`` int64 (the audio member's data in the tar),
    ``keys`` and ``fields`` (audio extension) lists, labels in CSR form (``label_ptr`` ``(N + 1,)``,
    ``label_ids``), ``shard_starts`` ``(S + 1,)``: samples of shard s are ``shard_starts[s] : shard_starts[s+1]``.
    """

    shards: list[str]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    keys: list[str]
    fields: list[str]
    label_ptr: np.ndarray
    label_ids: np.ndarray
    shard_starts: np.ndarray
    class_names: list[str]
    bad: list[tuple[str, str]] = field(default_factory=list)
    label_sources: dict[str, int] = field(default_factory=dict)  # label members read by kind: {"cls": n, "json": m}

    def __len__(self) -> int:
        return len(self.keys)

    def labels(self, i: int) -> list[int]:
        return self.label_ids[self.label_ptr[i] : self.label_ptr[i + 1]].tolist()

    def member(self, i: int) -> str:
        """``"<shard>:<key>.<field>"``, how errors and reports name a sample."""
        return f"{self.shards[self.shard[i]]}:{self.keys[i]}.{self.fields[i]}"


def member_table(path: str) -> list[list]:
    """``[[key, field, offset, size, labels or None]]`` of a complete shard (what ``prepare`` stores beside it)."""
    return [list(r) for r in _scan_one(path, "raise", [])]


def _sidecar(path: str) -> list[tuple[str, str, int, int, object]] | None:
    """The member table ``prepare`` wrote next to shard ``path`` (``shard-K.json``), if it belongs to this very
    tar (same size); else None and the tar is scanned. Why: scanning reads every header and json member, minutes
    for AudioSet's 2 million clips in every process that builds the set; the table is read in milliseconds."""
    side = Path(path).with_suffix(".json")
    try:
        if not side.is_file():
            return None
        rec = json.loads(side.read_text())
        if rec.get("bytes") != os.path.getsize(path) or "members" not in rec:
            return None
        return [(str(k), str(f), int(o), int(n), lab) for k, f, o, n, lab in rec["members"]]
    except (OSError, ValueError, TypeError):
        return None


def _scan_one(path: str, on_error: str, bad: list, sources: dict | None = None) -> list[tuple[str, str, int, int, object]]:
    """``[(key, field, offset, size, raw labels or None)]`` of one shard; problems raise or go to ``bad``;
    ``sources`` counts the label members read by kind (``{"cls": n, "json": m}``)."""
    sources = {} if sources is None else sources

    def problem(where: str, what: str) -> None:
        if on_error == "raise":
            raise DatasetError(f"webdataset: {where}: {what}")
        bad.append((where, what))

    if not os.path.isfile(path):
        problem(path, "shard not found")
        return []
    total = os.path.getsize(path)
    out: list = []
    cur: dict | None = None

    def close(sample: dict | None) -> None:
        if sample is None or sample.get("broken"):
            return  # a broken json was reported when it was read
        if "audio" not in sample:
            problem(f"{path}:{sample['key']}", f"sample has no audio member ({', '.join(AUDIO_FIELDS)})")
            return
        # labels: one list when one kind of label member was read; {"cls": [...], "json": [...]} when both were
        # (reconciled over the whole set by _reconcile_cls_json)
        labels = {"cls": sample["cls"], "json": sample["json"]} if "cls" in sample and "json" in sample else \
            sample.get("cls", sample.get("json"))
        out.append((sample["key"], *sample["audio"], labels))

    try:
        with tarfile.open(path, "r:") as tf:  # uncompressed tar: members are readable by offset
            while True:
                try:
                    m = tf.next()
                except tarfile.ReadError as e:  # a header cut in the middle, garbage after the last member
                    problem(path, f"truncated or corrupt tar after {len(out)} samples ({e})")
                    break
                if m is None:
                    if tf.offset >= total:  # the two zero blocks that end an archive are missing
                        problem(path, f"truncated tar: no end-of-archive marker after {len(out)} samples")
                    break
                if m.isdir():
                    continue  # a folder entry carries no sample data (``tar cf shard.tar dir/`` writes them)
                key, ext = split_key(m.name)
                if not m.isfile():  # a link, device or fifo has no bytes here: webdataset would drop it unsaid
                    problem(f"{path}:{m.name}", f"not a regular file ({_KIND.get(m.type, 'special member')}"
                            + (f" -> {m.linkname}" if m.linkname else "") + "): its sample is left out")
                    if cur is not None and cur["key"] == key:
                        cur["broken"] = True  # reported here, once; not again as "no audio member"
                    else:
                        close(cur)
                        cur = {"key": key, "broken": True}
                    continue
                if m.offset_data + m.size > total:
                    problem(f"{path}:{m.name}", f"truncated tar: member needs {m.size} bytes at "
                            f"{m.offset_data}, the file ends at {total}")
                    if cur is not None and cur["key"] == key:
                        cur["broken"] = True  # the sample cut here is reported once, as truncated
                    break
                if cur is None or cur["key"] != key:
                    close(cur)
                    cur = {"key": key}
                elif cur.get("broken"):
                    continue  # the rest of a sample already reported
                low = ext.lower()
                if low in AUDIO_FIELDS and "audio" not in cur:
                    cur["audio"] = (low, m.offset_data, m.size)
                elif low == "json":
                    try:
                        meta = json.loads(tf.extractfile(m).read())
                    except (ValueError, UnicodeDecodeError) as e:
                        problem(f"{path}:{m.name}", f"unreadable json ({e})")
                        cur["broken"] = True
                        continue
                    raw = next((meta[k] for k in JSON_LABEL_KEYS if k in meta), None) if isinstance(meta, dict) \
                        else None
                    if raw is not None:
                        cur["json"] = cur.get("json", []) + (raw if isinstance(raw, list) else [raw])
                        sources["json"] = sources.get("json", 0) + 1
                elif low == "cls":  # webdataset's class member: the class index as text ("3\n")
                    text = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                    try:
                        lab: int | str = int(text)
                    except ValueError:
                        lab = text  # a class name: looked up in the class list like a json name
                    if text:
                        cur["cls"] = cur.get("cls", []) + [lab]
                        sources["cls"] = sources.get("cls", 0) + 1
            close(cur)
    except tarfile.ReadError as e:  # not a tar at all (or compressed)
        problem(path, f"not an uncompressed tar file ({e})")
        return []
    return out


def _reconcile_cls_json(per_shard: list[list], shards: list[str]) -> tuple[list[list], list[str] | None]:
    """One label space for samples that carry both a ``.cls`` and a ``.json`` label member.

    The two describe the same clip: ``.cls`` its class index, ``.json`` its labels as indices or names. They agree
    when every sample's json labels are exactly its cls labels (indices), or when the json names and the cls
    indices pair up one to one over the whole set (index ``k`` is always name ``n`` and back); the class list is
    then the names in index order. Each sample keeps its ``.cls`` label. Anything else (``cls 2`` beside
    ``["tone"]`` in one sample and beside ``["noise"]`` in another, several json labels beside one class index) is
    a :class:`DatasetError` naming the first sample that disagrees: mixing the two would silently invent classes.

    Returns the rows with plain label lists and the class names the pairing fixes (None when it fixes none).
    """
    pairs: dict[int | str, tuple] = {}  # cls label -> json labels
    back: dict[tuple, int | str] = {}
    names_seen = False
    for s, rows in enumerate(per_shard):
        for r in rows:
            if not isinstance(r[4], dict):
                continue
            cls, js = r[4]["cls"], tuple(r[4]["json"])
            where = f"webdataset: {shards[s]}:{r[0]}"
            if len(cls) != 1 or len(js) != 1:
                raise DatasetError(f"{where}: .cls {cls} and .json labels {list(js)} disagree (one class index "
                                   "beside several labels); write one kind of label member per sample")
            if js == tuple(cls):
                continue  # the same index twice
            names_seen = True
            if pairs.setdefault(cls[0], js) != js or back.setdefault(js, cls[0]) != cls[0]:
                other = pairs[cls[0]] if pairs[cls[0]] != js else back[js]
                raise DatasetError(f"{where}: .cls {cls[0]} beside .json {list(js)} disagrees with another sample "
                                   f"({other!r}); .cls and .json must name the same classes")
    rows_out = [[(*r[:4], r[4]["cls"]) if isinstance(r[4], dict) else r for r in rows] for rows in per_shard]
    if not names_seen:
        return rows_out, None
    if not all(isinstance(k, int) for k in pairs):
        return rows_out, None  # cls members spell names too: the names found are the class list
    top = max(pairs)
    names = [str(pairs[k][0]) if k in pairs else str(k) for k in range(top + 1)]
    return rows_out, names


def scan_shards(
    pattern: str | Sequence[str],
    on_error: str = "raise",
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> ShardIndex:
    """Index the shards of ``pattern`` (module doc). Classes: ``class_names`` when given (labels may be names or
    indices into it), else ``num_classes`` (index labels ``0 .. C-1``), else ``dataset.json`` written by
    ``prepare`` next to the first shard, else the labels found (indices: ``0 .. max``; names: sorted)."""
    shards = expand_shards(pattern)
    bad: list[tuple[str, str]] = []
    per_shard = [_sidecar(p) if os.path.isfile(p) else None for p in shards]
    sources: dict[str, int] = {}
    per_shard = [rows if rows is not None else _scan_one(p, on_error, bad, sources)
                 for p, rows in zip(shards, per_shard)]
    if class_names is None and num_classes is None:
        meta = Path(shards[0]).parent / "dataset.json"
        if meta.is_file():
            class_names = json.loads(meta.read_text()).get("class_names")
    per_shard, cls_names = _reconcile_cls_json(per_shard, shards)
    if class_names is None and num_classes is None and cls_names is not None:
        class_names = cls_names
    found = {lab for rows in per_shard for r in rows for lab in (r[4] or [])}
    if class_names is not None:
        names = [str(c) for c in class_names]
    elif num_classes is not None:
        names = [str(c) for c in range(int(num_classes))]
    elif found and all(isinstance(x, int) for x in found):
        names = [str(c) for c in range(max(found) + 1)]
    else:
        names = sorted(str(x) for x in found)
    lookup = {n: i for i, n in enumerate(names)}
    keys, fields, shard, offset, size, ptr, ids, starts = [], [], [], [], [], [0], [], [0]
    for s, rows in enumerate(per_shard):
        for key, fld, off, sz, labels in rows:
            idx, unknown = [], []
            for lab in labels or []:
                if isinstance(lab, bool) or not isinstance(lab, (int, str)):
                    unknown.append(lab)
                elif isinstance(lab, int):
                    (idx if 0 <= lab < len(names) else unknown).append(lab)
                elif lab in lookup:
                    idx.append(lookup[lab])
                else:
                    unknown.append(lab)
            if unknown:
                where = f"{shards[s]}:{key}.json"
                what = f"labels {unknown} not in the class list ({len(names)} classes)"
                if on_error == "raise":
                    raise DatasetError(f"webdataset: {where}: {what}")
                bad.append((where, what))
                continue
            keys.append(key)
            fields.append(fld)
            shard.append(s)
            offset.append(off)
            size.append(sz)
            ids.extend(sorted(set(idx)))
            ptr.append(len(ids))
        starts.append(len(keys))
    if not keys:
        detail = f" (first problem: {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise DatasetError(f"webdataset: no usable sample in {len(shards)} shard(s) of {pattern!r}{detail}")
    return ShardIndex(
        shards=shards,
        shard=np.asarray(shard, dtype=np.int32),
        offset=np.asarray(offset, dtype=np.int64),
        size=np.asarray(size, dtype=np.int64),
        keys=keys,
        fields=fields,
        label_ptr=np.asarray(ptr, dtype=np.int64),
        label_ids=np.asarray(ids, dtype=np.int64),
        shard_starts=np.asarray(starts, dtype=np.int64),
        class_names=names,
        bad=bad,
        label_sources=sources,
    )


__all__ = ["AUDIO_FIELDS", "LABEL_SOURCES", "ShardIndex", "expand_shards", "read_class_list", "scan_shards", "split_key"]
