"""One-time preparation: decode every clip of any ``--data`` source once (mono, resampled to the model rate) and
write WebDataset tar shards that train without decoding.

Output folder::

    shard-000000.tar ...   clips [k S, (k + 1) S) of the source (S = shard_size); members KEY.wav (or .flac)
                           and KEY.json ({"labels": [class indices], "source": ..., "seconds": ...})
    shard-000000.json ...  the shard's index rows, bad files and member table (key, field, offset, size, labels:
                           the reader's index without a scan); written after its tar: its presence (with the tar's
                           size matching) is what marks the shard complete
    index.csv              key, shard, source, seconds, labels (';'-joined indices), checksum (sha256 of the audio
                           member)
    bad_files.csv          index, source, problem: clips of the source that could not be decoded (left out)
    dataset.json           class names, rate, format, counts, the source spec and the --data spec of the output

Format choice (``benchmarks/input_pipeline.py``): 16-bit PCM WAV members are read with ``np.frombuffer`` (no
decoder; :func:`~maskspec_fast.data.decode.parse_pcm16_wav`), FLAC halves the size but costs a decode.

Resumable and atomic: a shard is written to ``shard-K.tar.<pid>.part`` and renamed when complete, and its ``.json``
follows; a rerun (after a kill) skips the shards whose ``.json`` matches their tar and redoes the rest, so a
half-written shard never looks complete. Shards are built in parallel by ``workers`` processes.

One writer per folder, and no writer outlives its run: ``prepare`` holds an exclusive lock on ``OUT_DIR/.prepare.lock``
(``fcntl.flock``; a second live prepare on the folder stops at once with a one-line error, and the lock goes with
the process that holds it, however it ends); pool workers die with their parent (``PR_SET_PDEATHSIG`` on Linux,
and everywhere a check of the parent's pid before each clip), and a part file carries its writer's pid, so a
worker orphaned by ``kill -9`` can never rename its file over the rerun's (what once made the rerun fail).
A write that fails (no space left on the device, permission denied) ends the run with one line naming the folder
and the cause; the complete shards stay and the same command, rerun, resumes.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from ..frontend.audio import SAMPLE_RATE, AudioFileError
from .decode import encode_pcm16_wav

FORMATS = ("wav", "flac")
LOCK_NAME = ".prepare.lock"
_SOURCE: Any = None  # the data set, shared with forked workers
_PARENT: int | None = None  # in a pool worker: the pid of the prepare that started it


class PrepareError(RuntimeError):
    """``prepare`` cannot go on (the folder is in use, or cannot be written): one line naming the folder and why."""


def _lock_folder(out: Path) -> int | None:
    """Take the exclusive lock on ``out/.prepare.lock``; returns its descriptor (held until the process ends or
    it is closed), None where ``fcntl`` does not exist. A second prepare on the folder gets a PrepareError."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; unique part names still keep writers apart
        return None
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise PrepareError(f"{out} is being written by another prepare (pid {holder}, lock {out / LOCK_NAME}); "
                           "wait for it to finish or stop it, then run again") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _worker_init(parent: int, lock_fd: int | None) -> None:
    """Pool worker start: drop the inherited lock descriptor (the lock then lives and dies with the parent) and
    die with the parent: ``PR_SET_PDEATHSIG`` (Linux) sends SIGKILL when it ends, and :func:`_check_parent`
    covers systems without it."""
    global _PARENT
    _PARENT = parent
    if lock_fd is not None:
        os.close(lock_fd)  # closing a copy releases nothing while the parent holds its own
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    _check_parent()  # the parent may have died before the prctl call


def _check_parent() -> None:
    """In a pool worker whose parent is gone: stop now, before writing anything more."""
    if _PARENT is not None and os.getppid() != _PARENT:
        os._exit(1)


def _key(index: int, source: str) -> str:
    """A unique webdataset key: the clip index and the source's base name without dots (a dot ends the key)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(source.split(":")[-1] or "clip").stem)[:64]
    return f"{index:09d}_{stem}"


def _encode(wave, fmt: str, sample_rate: int) -> bytes:
    if fmt == "wav":
        return encode_pcm16_wav(wave, sample_rate)
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave.numpy(), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_done(out: Path, k: int, recipe: dict | None = None) -> bool:
    """Shard ``k`` is complete: its ``.json`` exists and names its tar's size (the tar is renamed into place
    complete, then the ``.json`` is written: a killed run leaves no ``.json`` for an unfinished shard). The sha256
    in the ``.json`` is for integrity checks; it is not recomputed here (a rerun would re-read every shard).
    ``recipe`` (source spec, clip range, format, rate) must match the one the shard was made with."""
    meta, tar = out / f"shard-{k:06d}.json", out / f"shard-{k:06d}.tar"
    if not meta.is_file() or not tar.is_file():
        return False
    try:
        info = json.loads(meta.read_text())
    except ValueError:
        return False
    if recipe is not None and info.get("recipe") != recipe:
        return False  # made from another source / shard size / format: redone, never mixed in
    return info.get("bytes") == tar.stat().st_size


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shard(ds, out: Path, k: int, first: int, last: int, fmt: str, sample_rate: int,
                strict: bool = False, recipe: dict | None = None) -> dict:
    """Decode clips ``[first, last)`` of ``ds`` into ``out/shard-K.tar`` (atomically), then its ``.json``.
    Returns the shard's record: ``rows`` (index rows), ``bad`` (``[index, source, problem]``)."""
    name = f"shard-{k:06d}.tar"
    part = out / f"{name}.{os.getpid()}.part"  # the writer's own: no other process renames it
    rows, bad = [], []
    try:
        _write_part(ds, part, name, first, last, fmt, sample_rate, strict, rows, bad)
    except BaseException:
        part.unlink(missing_ok=True)  # a failed write (a full disk) leaves no partial file behind
        raise
    from .shards import member_table

    tar = out / name
    os.replace(part, tar)
    record = {"shard": name, "bytes": tar.stat().st_size, "sha256": _sha256(tar), "rows": rows, "bad": bad,
              "members": member_table(str(tar)), "recipe": recipe}
    _write_json_atomic(out / f"shard-{k:06d}.json", record)
    return record


def _write_part(ds, part: Path, name: str, first: int, last: int, fmt: str, sample_rate: int, strict: bool,
                rows: list, bad: list) -> None:
    """Clips ``[first, last)`` of ``ds`` as a tar at ``part`` (flushed and synced); index rows and bad clips are
    appended to ``rows`` and ``bad``."""
    from webdataset import TarWriter

    with open(part, "wb") as fh:
        writer = TarWriter(fh, mtime=0)  # mtime fixed: the same input gives byte-identical shards
        try:
            _write_clips(ds, writer, name, first, last, fmt, sample_rate, strict, rows, bad)
        except BaseException:
            with contextlib.suppress(Exception):  # closed now, so it does not write again when collected
                writer.close()
            raise
        writer.close()
        fh.flush()
        os.fsync(fh.fileno())


def _write_clips(ds, writer, name: str, first: int, last: int, fmt: str, sample_rate: int, strict: bool,
                 rows: list, bad: list) -> None:
    """Decode, encode and write clips ``[first, last)`` as samples of ``writer``; bad clips go to ``bad`` (or
    raise with ``strict``)."""
    for i in range(first, last):
        _check_parent()
        try:
            wave, source = ds._load(i)
            labels = ds._label(i)
            source = source or f"{type(ds).__name__}:{i}"  # generated clips have no path
        except AudioFileError as e:
            if strict:
                raise
            bad.append([i, e.path, e.problem])
            continue
        labels = [int(c) for c in (labels if isinstance(labels, (list, tuple)) else [labels]) if int(c) >= 0]
        key = _key(i, source)
        audio = _encode(wave, fmt, sample_rate)
        seconds = wave.shape[0] / sample_rate
        writer.write({"__key__": key, fmt: audio,
                      "json": {"labels": labels, "source": source, "seconds": seconds}})
        rows.append([key, name, source, f"{seconds:.6f}", ";".join(map(str, labels)),
                     hashlib.sha256(audio).hexdigest()])


def _work(job: tuple) -> tuple[int, int, int]:
    k, first, last, out, fmt, rate, strict, recipe = job
    rec = write_shard(_SOURCE, Path(out), k, first, last, fmt, rate, strict, recipe)
    return k, len(rec["rows"]), len(rec["bad"])


def prepare(
    src_spec: str,
    out_dir: str | os.PathLike,
    shard_size: int = 1000,
    workers: int = 1,
    fmt: str = "wav",
    sample_rate: int = SAMPLE_RATE,
    progress: bool = True,
    strict: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Prepare ``src_spec`` into ``out_dir`` (module doc); returns the summary written to ``dataset.json``.
    Raises :class:`PrepareError` when the folder is in use by another prepare or cannot be written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if shard_size <= 0:
        raise ValueError(f"--shard-size must be positive, got {shard_size}")
    out = Path(out_dir)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock_folder(out)
    except OSError as e:
        raise PrepareError(_write_failure(out, e)) from None
    try:
        return _prepare_locked(src_spec, out, shard_size, workers, fmt, sample_rate, progress, strict, log, lock)
    except BaseException:
        if created:  # a run that failed before writing anything (a bad spec, no files) leaves no folder behind
            _remove_if_only_lock(out)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _remove_if_only_lock(out: Path) -> None:
    """Remove ``out`` when it holds nothing but this run's lock file (nothing else is ever deleted)."""
    try:
        if {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            (out / LOCK_NAME).unlink(missing_ok=True)
            out.rmdir()
    except OSError:
        pass  # best effort: the error being raised is the one to report


def _write_failure(out: Path, e: OSError) -> str:
    """One line for a failed write under ``out``: the folder, the cause, and what to do."""
    what = "no space left on device" if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) else \
        (e.strerror or str(e)).lower()
    where = f" (writing {Path(e.filename).name})" if e.filename else ""
    return (f"prepare: {what} in {out}{where}; the complete shards are kept: fix it and run the same command again "
            "to resume")


def _prepare_locked(src_spec: str, out: Path, shard_size: int, workers: int, fmt: str, sample_rate: int,
                    progress: bool, strict: bool, log: Callable[[str], None], lock: int | None) -> dict:
    global _SOURCE
    from tqdm import tqdm

    from .official import official_options
    from .spec import KINDS, build_dataset, parse_spec

    # not strict: what the source finds wrong when it is opened (a shard member that is a link, a cut tar) is
    # listed in bad_files.csv like an undecodable clip, not a reason to stop
    ds = build_dataset(src_spec, train=False, sample_rate=sample_rate, on_error="raise" if strict else "skip",
                       **official_options(KINDS[parse_spec(src_spec)[0]], out, strict))  # missing.csv in OUT_DIR
    ds.whole_clips = True  # shards hold each clip whole (within the decode budget), not the set's crop
    n = len(ds)
    num_shards = -(-n // shard_size)
    def recipe(k: int) -> dict:
        return {"source": src_spec, "clips": [k * shard_size, min(n, (k + 1) * shard_size)], "format": fmt,
                "sample_rate": sample_rate}

    jobs = [(k, k * shard_size, min(n, (k + 1) * shard_size), str(out), fmt, sample_rate, strict, recipe(k))
            for k in range(num_shards) if not shard_done(out, k, recipe(k))]
    for stale in sorted(out.glob("shard-*.tar")):  # shards past the end of a previous, larger run
        number = stale.name[len("shard-") : -len(".tar")]
        if number.isdigit() and int(number) >= num_shards:
            raise ValueError(f"{out} holds {stale.name}, beyond the {num_shards} shards of {src_spec!r}: "
                             "use an empty OUT_DIR for another source or shard size")
    if len(jobs) < num_shards:
        log(f"prepare: {num_shards - len(jobs)} of {num_shards} shards already complete in {out}; resuming")
    try:
        for stale in out.glob("shard-*.part"):
            stale.unlink()  # a killed run's half-written shard (we hold the lock: no live writer owns it)
        _SOURCE = ds
        bar = tqdm(total=n, initial=n - sum(j[2] - j[1] for j in jobs), unit="clip", desc="prepare",
                   disable=not progress, dynamic_ncols=True)
        try:
            if workers <= 1 or len(jobs) <= 1:
                for job in jobs:
                    k, good, nbad = _work(job)
                    bar.update(job[2] - job[1])
            else:
                import multiprocessing as mp

                ctx = mp.get_context("fork")
                with ctx.Pool(min(workers, len(jobs)), initializer=_worker_init, initargs=(os.getpid(), lock)) as pool:
                    sizes = {j[0]: j[2] - j[1] for j in jobs}
                    for k, _, _ in pool.imap_unordered(_work, jobs):
                        bar.update(sizes[k])
        finally:
            bar.close()
            _SOURCE = None
        return _finish(out, num_shards, ds, src_spec, fmt, sample_rate, log)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not str(getattr(e, "filename", "")).startswith(str(out)):
            raise  # a source file, not our output
        raise PrepareError(_write_failure(out, e)) from None


def _finish(out: Path, num_shards: int, ds, src_spec: str, fmt: str, sample_rate: int, log) -> dict:
    """Merge the shard records into ``index.csv``, ``bad_files.csv`` and ``dataset.json``; print the spec."""
    found = ds.problems() if ds.streaming else []  # a StreamSource reports what its scan of the shards found
    rows, bad = [], [["", where, problem] for where, problem in found]
    for k in range(num_shards):
        rec = json.loads((out / f"shard-{k:06d}.json").read_text())
        rows += rec["rows"]
        bad += rec["bad"]
    for name, header, body in (("index.csv", ["key", "shard", "source", "seconds", "labels", "checksum"], rows),
                               ("bad_files.csv", ["index", "source", "problem"], bad)):
        tmp = out / f".{name}.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(body)
        os.replace(tmp, out / name)
    spec = f"webdataset:{out}/shard-{{{0:06d}..{num_shards - 1:06d}}}.tar" if num_shards > 1 else \
        f"webdataset:{out}/shard-000000.tar"
    summary = {"spec": spec, "source_spec": src_spec, "format": fmt, "sample_rate": sample_rate,
               "num_clips": len(rows), "bad_clips": len(bad), "num_shards": num_shards,
               "seconds": round(sum(float(r[3]) for r in rows), 3),
               "class_names": list(ds.class_names), "multilabel": bool(ds.multilabel)}
    _write_json_atomic(out / "dataset.json", summary)
    log(f"prepare: {len(rows)} clips ({summary['seconds'] / 3600:.2f} h) in {num_shards} shard(s) under {out}"
        + (f"; {len(bad)} bad clip(s) left out (first: {bad[0][1]}: {bad[0][2]}), listed in "
           f"{out / 'bad_files.csv'}" if bad else ""))
    log(f"train on it with: --data {spec}")
    return summary


__all__ = ["FORMATS", "PrepareError", "prepare", "shard_done", "write_shard"]
