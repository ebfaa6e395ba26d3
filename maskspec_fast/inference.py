"""What every tool around the model shares (``embed``, ``export``, ``hear``, ``xares`` import it side by side; none of
them imports another): loading an encoder for inference, and embeddings of audio longer than the model's input
(patch-column embeddings over consecutive windows, timestamp embeddings on shifted patch grids).

Timestamp embeddings ``(B, n_ts, D)`` every ``hop_frames`` x 10 ms: a patch column covers ``p = 16`` frames
(160 ms); the encoder is run ``p / hop_frames`` times on the spectrogram with its start shifted by ``0, hop_frames,
2 hop_frames, ...`` frames, and the columns of the passes are interleaved. Each embedding is fc_norm(frequency-mean
of the tokens of the patch column centred at its timestamp) -- real encoder outputs, not interpolations. Timestamps
(ms) are the column centres ``(k * hop_frames + p / 2) * 10``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .frontend.constants import FRAME_MS
from .model import Classifier

HOP_MS = FRAME_MS  # one log-mel frame = 320 samples at 32 kHz (the front end's constant)


def load_encoder(checkpoint: str, device: str | torch.device) -> Classifier:
    """A Classifier from a save_pretrained directory, a hub id or a MAE-family ``.pth`` (fine-tuned heads kept)."""
    from .hub import is_repo_id, resolve_pretrained
    from .interop import read_mae_checkpoint
    from .serialization import CONFIG_NAME, read_meta

    if Path(checkpoint).is_dir() or is_repo_id(checkpoint):
        d = resolve_pretrained(checkpoint)
        kind = read_meta(d / CONFIG_NAME)["model_type"]  # a malformed file: one line naming it
        clf = Classifier.from_pretrained(d, num_classes=None if kind == "classifier" else 1)
    elif Path(checkpoint).is_file():
        has_head = "head.weight" in read_mae_checkpoint(checkpoint).state
        clf = Classifier.from_mae_checkpoint(checkpoint, num_classes=None if has_head else 1)
    else:
        raise FileNotFoundError(f"{checkpoint}: no such directory or file, and not a hub repo id 'org/name'")
    return clf.to(device).eval()


def column_embeddings(enc: Classifier, spec: torch.Tensor) -> torch.Tensor:
    """``(B, F, T)`` -> ``(B, T // p, D)``: fc_norm(frequency-mean of each patch column's tokens), the encoder run
    on non-overlapping windows of ``config.frames`` (the last may be shorter; positions cropped)."""
    p, win = enc.config.patch_size, enc.config.frames
    t = spec.shape[-1] // p * p
    columns = []
    for start in range(0, t, win):
        columns.append(enc.embed_frames(spec[..., start : min(start + win, t)]))  # (B, gt, D)
    return torch.cat(columns, dim=1)


@torch.no_grad()
def timestamp_embeddings_of_spec(
    enc: Classifier, spec: torch.Tensor, hop_frames: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """log-mel ``(B, F, T)`` -> embeddings ``(B, n_ts, D)`` every ``hop_frames`` frames and their centres ``(n_ts,)``
    in ms, ``n_ts = (T - p) // hop_frames + 1`` (shifted patch grids; see module doc)."""
    p, t = enc.config.patch_size, spec.shape[-1]
    if hop_frames < 1 or p % hop_frames:
        raise ValueError(f"hop_frames={hop_frames} must divide the patch size {p}")
    if t < p:
        raise ValueError(f"spectrogram of {t} frames is shorter than one patch ({p})")
    n_shifts = p // hop_frames
    n_ts = (t - p) // hop_frames + 1  # columns [k*hop, k*hop + p) that fit: k = 0 .. n_ts-1
    emb = spec.new_empty(spec.shape[0], n_ts, enc.config.embed_dim)
    for j in range(min(n_shifts, n_ts)):
        cols = column_embeddings(enc, spec[..., j * hop_frames :])  # (B, n_j, D): columns k = j, j + n_shifts, ...
        emb[:, j::n_shifts] = cols[:, : emb[:, j::n_shifts].shape[1]]
    centres = (torch.arange(n_ts, dtype=torch.float32, device=spec.device) * hop_frames + p / 2) * HOP_MS
    return emb, centres


__all__ = ["HOP_MS", "column_embeddings", "load_encoder", "timestamp_embeddings_of_spec"]
