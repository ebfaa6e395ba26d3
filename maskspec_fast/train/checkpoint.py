"""Training checkpoints: a directory per save, written atomically (temporary directory, then rename).

Layout: ``<out>/checkpoints/step_00000100/`` holding ``model.safetensors`` + ``config.json`` (loadable with
``from_pretrained``) and ``trainer.pt`` (optimizer, step, sampler position, grad-scaler state, RNG states of every
rank; read with ``weights_only=True``). A directory without the ``COMPLETE`` marker (a save that was interrupted)
is never loaded. ``<out>/checkpoints/best/`` (same layout) holds the best model by the evaluation metric, described
by ``<out>/best.json``; it is never pruned by ``keep``.
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
) -> Path:
    """Write ``checkpoints/<name>`` (default ``step_XXXXXXXX``) atomically and keep the newest ``keep`` step
    checkpoints (``best`` and other named ones are not counted or pruned).

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
    model.save_pretrained(tmp)
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / COMPLETE).write_text(str(step))
    if final.exists():
        old = ckpt_root / f".old_{name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    for stale in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    for debris in [*ckpt_root.glob(".tmp_*"), *ckpt_root.glob(".old_*")]:  # left by a process killed mid-save
        if not debris.name.endswith(f"_{os.getpid()}"):
            shutil.rmtree(debris, ignore_errors=True)
    return final


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


def load_trainer_state(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path}: not a complete checkpoint (missing {COMPLETE} marker; the save was interrupted?)")
    return torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
