"""Training checkpoints: a directory per save, written atomically (temporary directory, then rename).

Layout: ``<out>/checkpoints/step_00000100/`` holding ``model.safetensors`` + ``config.json`` (loadable with
``from_pretrained``) and ``trainer.pt`` (optimizer, step, sampler position, grad-scaler state, RNG states of every
rank; read with ``weights_only=True``). A directory without the ``COMPLETE`` marker (a save that was interrupted)
is never loaded. A state holding a NaN or Inf is never written (:func:`nonfinite_tensors` is checked first by
:func:`~maskspec_fast.train.state.save_training`); :func:`last_good_checkpoint` also passes over poisoned ones that
older versions wrote, and ones written after the loss diverged (:mod:`~maskspec_fast.train.divergence`). A failed write (a full disk) removes its temporary
directory and raises :class:`~maskspec_fast.serialization.CheckpointWriteError`; earlier checkpoints are untouched. ``<out>/checkpoints/best/`` (same layout) holds the best model by the evaluation metric, described
by ``<out>/best.json``; it is never pruned by ``keep``.
"""
from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..serialization import CheckpointError, CheckpointWriteError, write_failure

COMPLETE = "COMPLETE"


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors and plain values (so ``torch.load(weights_only=True)`` reads them)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path,
    step: int,
    model: torch.nn.Module,
    trainer_state: dict[str, Any],
    keep: int = 3,
    name: str | None = None,
    protect: Path | None = None,
) -> Path:
    """Write ``checkpoints/<name>`` (default ``step_XXXXXXXX``) atomically and keep the newest ``keep`` step
    checkpoints (``best`` and other named ones are not counted or pruned), and ``protect`` besides (the newest
    one a diverging run could continue from: when the loss climbs slowly, the newest ``keep`` may all be
    diverged). Step checkpoints past ``step`` are removed: they belong to a continuation that this run, resumed
    from an earlier checkpoint, has abandoned (as its rows of ``log.csv`` are).

    Why a temporary directory + rename: a process killed mid-save leaves only a ``.tmp_*`` directory without the
    ``COMPLETE`` marker, which nothing loads; the previous checkpoint of the same name is replaced only when the
    new one is whole (a tiny window between removing the old and renaming the new loses only that one name).
    """
    ckpt_root = Path(out) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = name or f"step_{step:08d}"
    final = ckpt_root / name
    tmp = ckpt_root / f".tmp_{name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        model.save_pretrained(tmp)
        try:
            with open(tmp / "trainer.pt", "wb") as fh:
                torch.save(trainer_state, fh)
        except RuntimeError as e:
            # torch's zip writer reports a short write on a full disk as "unexpected pos A vs B", not as ENOSPC
            # (even through a Python file object): ask the file system whether the rest would have fitted
            if _out_of_space(tmp / "trainer.pt", trainer_state):
                raise OSError(errno.ENOSPC, f"No space left on device ({_first_line(e)})") from e
            raise
        (tmp / COMPLETE).write_text(str(step))
    except (OSError, RuntimeError) as e:  # half a checkpoint is never left behind, older ones stay as they were
        shutil.rmtree(tmp, ignore_errors=True)
        cause = e.__cause__ if isinstance(e, CheckpointWriteError) and e.__cause__ is not None else e
        raise write_failure(ckpt_root, f"checkpoint {name}", cause) from cause
    if final.exists():
        old = ckpt_root / f".old_{name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    steps = list_checkpoints(out)
    abandoned = [p for p in steps if int(p.name.split("_")[1]) > step] if name.startswith("step_") else []
    kept = [p for p in steps if p not in abandoned]
    for stale in [*abandoned, *(kept[:-keep] if keep > 0 else [])]:
        if protect is None or stale.resolve() != Path(protect).resolve():
            shutil.rmtree(stale, ignore_errors=True)
    for debris in [*ckpt_root.glob(".tmp_*"), *ckpt_root.glob(".old_*")]:  # left by a process killed mid-save
        if not debris.name.endswith(f"_{os.getpid()}"):
            shutil.rmtree(debris, ignore_errors=True)
    return final


def _out_of_space(partial: Path, obj: Any) -> bool:
    """Whether writing ``obj`` to ``partial`` (a file a failed ``torch.save`` left) failed for want of space: the
    bytes still missing (``obj``'s serialized size minus what ``partial`` holds) plus one file-system block exceed
    the space left. False when that cannot be told (``obj`` does not serialize, the folder is gone)."""
    import io

    try:
        buf = io.BytesIO()
        torch.save(obj, buf)
        written = partial.stat().st_size if partial.exists() else 0
        fs = os.statvfs(partial.parent)
    except (OSError, RuntimeError):
        return False
    return fs.f_bavail * fs.f_frsize < buf.tell() - written + fs.f_frsize


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` via a temporary file + rename (a reader never sees half a file)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def latest_checkpoint(out: Path) -> Path | None:
    ck = list_checkpoints(out)
    return ck[-1] if ck else None


def nonfinite_tensors(named: Iterable[tuple[str, Any]]) -> list[str]:
    """Names of the floating-point tensors among ``named`` that hold a NaN or an Inf (one device sync in all)."""
    names, flags = [], []
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            names.append(name)
            flags.append(torch.isfinite(t).all().logical_not())
    if not flags:
        return []
    dev = flags[0].device
    return [n for n, bad in zip(names, torch.stack([f.to(dev) for f in flags]).tolist()) if bad]


def optimizer_tensors(state: dict[str, Any]) -> list[tuple[str, Any]]:
    """``("optimizer.<param>.<key>", tensor)`` for an optimizer ``state_dict()`` (moments, step counters)."""
    return [(f"optimizer.{i}.{k}", v) for i, st in state.get("state", {}).items() for k, v in st.items()]


def checkpoint_nonfinite(path: Path, blob: dict[str, Any] | None = None) -> list[str]:
    """The non-finite tensors of a complete checkpoint directory (model weights and optimizer state); ``blob``: its
    ``trainer.pt`` when already read."""
    from safetensors.torch import load_file

    path = Path(path)
    blob = load_trainer_state(path) if blob is None else blob
    weights = path / "model.safetensors"
    try:
        model = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({' '.join(str(e).split())[:300]})") from e
    return nonfinite_tensors([*model.items(), *optimizer_tensors(blob.get("optimizer") or {})])


def last_good_checkpoint(out: Path, log: Any = None) -> Path | None:
    """The newest complete step checkpoint the run can continue from (what ``--resume auto`` takes): its weights
    and optimizer state all finite, not marked diverged by a stopped run, and its own logged loss not diverged
    (:mod:`~maskspec_fast.train.divergence`). The others are passed over with a note to ``log``; an unreadable or
    hostile one is a :class:`CheckpointError`, never skipped silently."""
    from .divergence import MARKER, diverged

    note = log if log is not None else (lambda *a: None)
    for path in reversed(list_checkpoints(out)):
        if (path / MARKER).is_file():
            note(f"warning: {path} was rejected when the run stopped ({(path / MARKER).read_text().strip()}); "
                 "passed over")
            continue
        blob = load_trainer_state(path)
        bad = checkpoint_nonfinite(path, blob)
        if bad:
            note(f"warning: {path} holds non-finite values ({len(bad)} tensors, e.g. {bad[0]}); passed over")
            continue
        if diverged(blob.get("loss"), blob.get("start_loss")):
            note(f"warning: {path} was written after the loss diverged (loss {blob['loss']:.4g}, start loss "
                 f"{blob['start_loss']:.4g}); passed over")
            continue
        return path
    return None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """``trainer.pt`` of a complete checkpoint, unpickled weights-only: a file that pickles anything else (code
    to run) is refused with a :class:`CheckpointError` naming it, and nothing in it is executed."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (missing {COMPLETE} marker; the save was "
                              "interrupted?)")
    file = path / "trainer.pt"
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{file}: missing") from e
    except Exception as e:  # UnpicklingError for a hostile pickle, RuntimeError for a damaged zip, ...
        from ..interop import _forbidden_globals

        bad = _forbidden_globals(file, e)
        why = (f"it pickles {', '.join(bad)}" if bad else
               (str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        raise CheckpointError(f"{file}: refused, not a weights-only training state ({why}); it is never fully "
                              "unpickled, since that would run code from the file") from e
    if not isinstance(blob, dict):
        raise CheckpointError(f"{file}: expected a dict of training state, got {type(blob).__name__}")
    return blob
