"""save_pretrained / from_pretrained: safetensors weights + a JSON config, shared by Model and Classifier."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_dir(directory: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` atomically (temporary names, then rename)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp_w, tmp_c = d / (WEIGHTS_NAME + ".tmp"), d / (CONFIG_NAME + ".tmp")
    save_file(tensors, str(tmp_w))
    tmp_c.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_w, d / WEIGHTS_NAME)
    os.replace(tmp_c, d / CONFIG_NAME)
    return d


def load_dir(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_dir` wrote; a missing or unreadable file is a clear error naming the path."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg, weights = d / CONFIG_NAME, d / WEIGHTS_NAME
    for f in (cfg, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (expected a directory written by save_pretrained)")
    try:
        meta = json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: not valid JSON ({e})") from e
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{weights}: cannot be read as safetensors ({e})") from e
    return state, meta
