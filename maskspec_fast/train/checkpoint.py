"""Training checkpoints: a directory per save, written atomically (temporary directory, then rename).

Layout: ``<out>/checkpoints/step_00000100/`` holding ``model.safetensors`` + ``config.json`` (loadable with
``from_pretrained``) and ``trainer.pt`` (optimizer, step, sampler position, RNG states; read with
``weights_only=True``). A directory without the ``COMPLETE`` marker (a save that was interrupted) is never loaded.
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


def save_checkpoint(out: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``step_XXXXXXXX`` atomically and keep the newest ``keep`` (plus ``best`` if present)."""
    ckpt_root = Path(out) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / COMPLETE).write_text(str(step))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
