"""Optimizer and learning-rate schedule of the MaskSpec/MAE recipes (docs/MASKSPEC.md, "Training recipes")."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# Parameters without weight decay: biases, norms, tokens and positional tables (MAE's param_groups_weight_decay).
_NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed", "decoder_pos_embed")


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in _NO_DECAY_NAMES


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """MAE's linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * global_batch / 256.0


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups: no decay on biases/norms/tokens; with ``layer_decay`` (fine-tuning), group g of a
    depth-N encoder gets ``lr_scale = layer_decay ** (N + 1 - layer_id)`` where patch_embed/cls/pos are layer 0,
    block i is layer i + 1 and the head / fc_norm are layer N + 1 (BEiT/MAE layer-wise decay)."""
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = depth + 1
        if layer_decay is not None:
            if name.startswith(("patch_embed", "cls_token", "pos_embed")):
                layer = 0
            elif name.startswith("blocks."):
                layer = int(name.split(".")[1]) + 1
        nd = _no_decay(name, p)
        key = (layer, nd)
        if key not in groups:
            scale = 1.0 if layer_decay is None else layer_decay ** (depth + 1 - layer)
            groups[key] = {"params": [], "weight_decay": 0.0 if nd else weight_decay, "lr_scale": scale}
        groups[key]["params"].append(p)
    return list(groups.values())


def warmup_cosine(step: int, total: int, warmup: int, peak: float, min_lr: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then a half-cycle cosine down to ``min_lr`` at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if total <= warmup:
        return peak
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def make_adamw(params, lr: float, betas: tuple[float, float] = (0.9, 0.95), **kw) -> torch.optim.AdamW:
    """AdamW with the fused multi-tensor kernel (CPU and CUDA): the same algorithm as the default per-tensor loop,
    3x faster on this 2-core CPU for MaskSpec-tiny (idle machine: 4.3 ms vs 12.8 ms per update). Falls back to
    ``foreach`` where fused is unsupported (e.g. float64 params)."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, fused=True, **kw)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, betas=betas, foreach=True, **kw)
