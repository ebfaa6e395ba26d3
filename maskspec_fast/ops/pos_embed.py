"""Fixed 2-D sin-cos positional embeddings (MAE) and their resizing to other time lengths."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``(M,)`` positions -> ``(M, dim)``: [sin(p * w_i), cos(p * w_i)], w_i = 1 / 10000^(i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sin-cos dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = positions.double().reshape(-1, 1) * omega.reshape(1, -1)  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """2-D table for a (freq, time) grid, row-major like the patches: ``(gf*gt [+1], dim)`` in fp32.

    Half the channels encode the time (column) index and half the frequency (row) index, as MAE's
    ``get_2d_sincos_pos_embed`` does for images (first half: column). The CLS row is zeros.
    """
    gf, gt = grid
    rows = torch.arange(gf).repeat_interleave(gt)  # (L,) freq index of each patch
    cols = torch.arange(gt).repeat(gf)  # (L,) time index of each patch
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # (L, dim)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def resize_pos_embed(
    pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1
) -> torch.Tensor:
    """Fit a ``(1, prefix + gf*gt, D)`` table to another grid.

    Shorter time grids take the first columns (crop: for sin-cos this is exact); longer grids (or another
    frequency grid) are bilinearly interpolated, as AST/PaSST-style code does for learned tables.
    """
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, body = pos[:, :num_prefix], pos[:, num_prefix:]
    d = pos.shape[-1]
    gf, gt = old_grid
    nf, nt = new_grid
    body = body.reshape(1, gf, gt, d)
    if nf == gf and nt <= gt:
        body = body[:, :, :nt]
    else:
        img = body.permute(0, 3, 1, 2).float()  # (1, D, gf, gt)
        img = F.interpolate(img, size=(nf, nt), mode="bilinear", align_corners=False)
        body = img.permute(0, 2, 3, 1).to(pos.dtype)
    return torch.cat([prefix, body.reshape(1, nf * nt, d)], dim=1)


def fit_pos_tables(state: dict[str, torch.Tensor], model: torch.nn.Module,
                   source: object = None) -> dict[str, torch.Tensor]:
    """``state`` with its positional tables (``pos_embed``, ``decoder_pos_embed``; ``(1, 1 + L, D)``) resized to
    ``model``'s grid when a checkpoint was made for another one (e.g. 992 vs 1000 frames): the patch positions
    are a ``(grid_f, L / grid_f)`` grid, resized by :func:`resize_pos_embed`. Other entries are unchanged.
    A table that cannot be such a grid is a ``ValueError`` naming ``source`` (the checkpoint) and the tensor."""
    own = model.state_dict()
    out = dict(state)
    where = f"{source}: " if source is not None else ""
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state and key in own and state[key].shape != own[key].shape:
            src, dst = state[key], own[key]
            gf = model.config.grid_f
            if src.dim() != 3 or src.shape[0] != 1 or src.shape[2] != dst.shape[2] or not src.is_floating_point():
                raise ValueError(f"{where}tensor {key} has shape {tuple(src.shape)} and dtype {src.dtype}; "
                                 f"the model expects {tuple(dst.shape)} {dst.dtype}")
            old_l = src.shape[1] - 1
            if old_l % gf:
                raise ValueError(f"{where}{key}: {old_l} positions do not fit {gf} frequency rows")
            out[key] = resize_pos_embed(src, (gf, old_l // gf), model.config.grid_size).to(dst.dtype)
    return out
