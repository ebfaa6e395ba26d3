"""Reading checkpoints of MAE-style audio code (``.pth`` files with a ``model`` state dict in MAE/timm naming).

``.pth`` files are untrusted input: they are read with ``torch.load(..., weights_only=True)``, which refuses
pickled code. The model configuration is inferred from tensor shapes; head counts are not stored in weights, so
they follow the ViT convention of 64-wide heads (MaskSpec's decoder: 16 heads of 32) unless given.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch

from .config import ModelConfig


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict inside a ``.pth`` (``{"model": sd}``, ``{"state_dict": sd}`` or a bare sd); ``module.``
    prefixes (DDP) are stripped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def infer_config(state: dict[str, Any], n_mels: int = 128, **overrides: Any) -> ModelConfig:
    """Sizes from the shapes of a MAE/timm state dict; ``overrides`` win."""
    if "patch_embed.proj.weight" not in state:
        raise ValueError("state dict has no patch_embed.proj.weight: not a ViT/MAE checkpoint")
    w = state["patch_embed.proj.weight"]  # (D, 1, p, p)
    if w.dim() != 4 or w.shape[1] != 1:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; expected (D, 1, p, p) for spectrograms")
    d, p = w.shape[0], w.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    n_pos = state["pos_embed"].shape[1] - 1 if "pos_embed" in state else None
    gf = n_mels // p
    frames = (n_pos // gf) * p if n_pos else 992
    cfg: dict[str, Any] = dict(n_mels=n_mels, patch_size=p, embed_dim=d, depth=depth, num_heads=max(1, d // 64),
                               frames=frames)
    mlp = state.get("blocks.0.mlp.fc1.weight")
    if mlp is not None:
        cfg["mlp_ratio"] = mlp.shape[0] / d
    if "decoder_embed.weight" in state:
        dd = state["decoder_embed.weight"].shape[0]
        cfg["decoder_embed_dim"] = dd
        cfg["decoder_depth"] = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks."))
        cfg["decoder_num_heads"] = 16 if dd == 512 else max(1, dd // 64)
    cfg.update(overrides)
    return ModelConfig(**cfg)
