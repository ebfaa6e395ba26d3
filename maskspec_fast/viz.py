"""Pictures people would rather look at than read: reconstructions and training curves (PNG, matplotlib Agg)."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from .ops.masked_mse import NORM_PIX_EPS
from .ops.patchify import patchify_ref, unpatchify


def reconstruction_image(
    spec: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int = 16, norm_pix: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One clip: spec ``(F, T)``, pred ``(L, p*p)``, mask ``(L,)`` -> (input, masked input with NaN holes,
    reconstruction = visible input + de-normalized predictions in the masked patches), each ``(F', T')``."""
    spec = spec.detach().float().cpu()
    p = patchify_ref(spec.unsqueeze(0), patch)[0]  # (L, p*p)
    grid = (spec.shape[0] // patch, spec.shape[1] // patch)
    pr = pred.detach().float().cpu()
    if norm_pix:  # predictions live in per-patch normalized units: map back with the true patch statistics
        mean, var = p.mean(-1, keepdim=True), p.var(-1, keepdim=True, unbiased=True)
        pr = pr * (var + NORM_PIX_EPS).sqrt() + mean
    m = mask.detach().float().cpu().unsqueeze(-1)  # (L, 1)
    recon = p * (1 - m) + pr * m
    holes = p.masked_fill(m.bool().expand_as(p), float("nan"))
    crop = spec[: grid[0] * patch, : grid[1] * patch]
    return crop, unpatchify(holes.unsqueeze(0), grid, patch)[0], unpatchify(recon.unsqueeze(0), grid, patch)[0]


def save_reconstructions(
    specs: torch.Tensor, preds: torch.Tensor, masks: torch.Tensor, path: str | Path, patch: int = 16,
    norm_pix: bool = True, title: str = ""
) -> Path:
    """Grid of (input | masked | reconstruction) rows for up to 4 clips. specs ``(B, F, T)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(4, specs.shape[0])
    fig, axes = plt.subplots(n, 3, figsize=(12, 2.2 * n + 0.6), squeeze=False)
    for i in range(n):
        images = reconstruction_image(specs[i], preds[i], masks[i], patch, norm_pix)
        lo, hi = float(images[0].min()), float(images[0].max())
        for j, (img, name) in enumerate(zip(images, ("input", "masked (model sees)", "reconstruction"))):
            ax = axes[i][j]
            ax.imshow(img.numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def save_curves(log_csv: str | Path, path: str | Path, keys: tuple[str, ...] = ("loss", "lr", "grad_norm")) -> Path:
    """Training curves from a ``log.csv`` written by the training loop (one panel per column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = tuple(k for k in keys if rows and k in rows[0])
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(4.5 * max(1, len(keys)), 3.2), squeeze=False)
    steps = [int(r["step"]) for r in rows]
    for ax, k in zip(axes[0], keys):
        vals = [float(r[k]) for r in rows]
        ax.plot(steps, vals)
        ax.set_xlabel("step")
        ax.set_title(k)
        if k == "loss":
            ax.set_yscale("log")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
