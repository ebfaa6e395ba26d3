"""The HEAR benchmark API (hearbenchmark.com): ``load_model``, ``get_scene_embeddings``,
``get_timestamp_embeddings``, so the encoder can be evaluated by the standard audio-representation suite.

Sample rate: HEAR hands every model audio at one of 16000 / 22050 / 44100 / 48000 Hz (it resamples each task to
all four beforehand). We declare **48000**: downsampling to the model's 32 kHz keeps the full 0-15 kHz mel band it
was trained on (16 kHz input would leave every bin above 8 kHz empty). The 48 -> 32 kHz step runs inside, on the
model's device, with our polyphase resampler's filter (:func:`resample_on_device`, the same windowed sinc as
:func:`maskspec_fast.frontend.audio.resample`).

Scene embedding ``(n_sounds, D)``: fc_norm(mean of patch tokens), averaged over sliding windows for audio longer
than the model's input.

Timestamp embeddings ``(n_sounds, n_timestamps, D)`` every ``hop_frames`` x 10 ms (default 4 frames = **40 ms**,
within HEAR's <= 50 ms): *shifted patch grids* (:func:`maskspec_fast.inference.timestamp_embeddings_of_spec`, shared
with the embedding CLI and the X-ARES encoder). A patch column covers 16 frames (160 ms); the encoder is run
``16 / hop_frames`` times on the spectrogram with its start shifted by 0, 4, 8, 12 frames, and the columns of
the passes are interleaved. Each embedding is fc_norm(frequency-mean of the tokens of the patch column centred at
its timestamp) -- real encoder outputs, not interpolations -- at the cost of ``16 / hop_frames`` encoder passes.
Timestamps (ms) are the column centres: ``(k * hop_frames + 8) * 10``.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig
from .frontend.logmel import SAMPLE_RATE, LogMel
from .inference import HOP_MS, column_embeddings, timestamp_embeddings_of_spec
from .model import Classifier, Model

HEAR_SAMPLE_RATE = 48000
HEAR_RATES = (16000, 22050, 44100, 48000)


@lru_cache(maxsize=16)
def _polyphase_bank(up: int, down: int) -> tuple[np.ndarray, int]:
    """The ``up`` sub-filters of ``up * h`` (``h`` = :func:`maskspec_fast.frontend.filters.polyphase_lowpass`) as rows of
    ``W (up, span)`` and the input offset ``base``: output ``m = r + up*q`` is
    ``y[m] = sum_i W[r, i] * x[q*down + base + i]``, i.e. ``sum_k x[k] * up * h[m*down - k*up + c]`` with ``c`` the
    centre tap: scipy's ``resample_poly`` on the zero-stuffed signal, computed only where it is kept."""
    from .frontend.filters import polyphase_lowpass

    h = polyphase_lowpass(up, down) * up
    c = (h.size - 1) // 2
    r = np.arange(up)
    k_lo = -((c - r * down) // up)  # ceil((r*down - c) / up)
    k_hi = (r * down + c) // up
    base = int(k_lo.min())
    span = int(k_hi.max()) - base + 1
    k = base + np.arange(span)[None, :]  # (1, span)
    idx = r[:, None] * down - k * up + c  # (up, span) tap of h for each (phase, input)
    w = np.where((idx >= 0) & (idx < h.size), h[np.clip(idx, 0, h.size - 1)], 0.0)
    return w, base


def resample_on_device(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """``(B, N)`` -> ``(B, ceil(N * new_sr / orig_sr))`` on ``wave``'s device (fp32): polyphase FIR.

    Same filter and alignment as :func:`maskspec_fast.frontend.audio.resample` (scipy ``resample_poly`` with our
    windowed sinc, zeros beyond the ends; float64 on the CPU), computed as one strided ``conv1d`` with one output
    channel per phase (:func:`_polyphase_bank`); matches it to float32 rounding."""
    if orig_sr == new_sr:
        return wave.float()
    g = math.gcd(int(orig_sr), int(new_sr))
    up, down = int(new_sr) // g, int(orig_sr) // g
    b, n = wave.shape
    w_np, base = _polyphase_bank(up, down)
    w = torch.as_tensor(w_np, dtype=torch.float32, device=wave.device).unsqueeze(1)  # (up, 1, span)
    n_out = -(-n * up // down)
    n_q = -(-n_out // up)  # outputs per phase
    left = -base
    right = max(0, (n_q - 1) * down + w.shape[-1] - left - n)
    x = F.pad(wave.float(), (left, right)).unsqueeze(1)  # (B, 1, left + N + right)
    y = F.conv1d(x, w, stride=down)[..., :n_q]  # (B, up, n_q): y[b, r, q] = output r + up*q
    return y.transpose(1, 2).reshape(b, n_q * up)[:, :n_out].contiguous()


class HearModel(nn.Module):
    """An encoder with the attributes HEAR reads: ``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``; ``hop_frames`` sets the timestamp hop (10 ms frames, divides the patch size)."""

    sample_rate = HEAR_SAMPLE_RATE

    def __init__(self, encoder: Classifier, hop_frames: int = 4):
        super().__init__()
        p = encoder.config.patch_size
        if hop_frames < 1 or p % hop_frames:
            raise ValueError(f"hop_frames={hop_frames} must divide the patch size {p}")
        self.encoder = encoder.eval()
        self.frontend = LogMel().eval()
        self.hop_frames = hop_frames
        self.scene_embedding_size = int(encoder.config.embed_dim)
        self.timestamp_embedding_size = int(encoder.config.embed_dim)

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """``(n_sounds, n_samples)`` at :attr:`sample_rate` -> log-mel ``(n_sounds, 128, frames)`` at 32 kHz."""
        if audio.dim() != 2:
            raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got {tuple(audio.shape)}")
        audio = resample_on_device(audio.float(), self.sample_rate, SAMPLE_RATE)
        p = self.encoder.config.patch_size
        min_samples = p * 320 + 1  # at least one whole patch of frames
        if audio.shape[1] < min_samples:
            audio = F.pad(audio, (0, min_samples - audio.shape[1]))
        return self.frontend(audio)


def load_model(model_file_path: str = "", preset: str = "tiny", device: str | None = None) -> HearModel:
    """A saved Model/Classifier directory (save_pretrained), a hub id ``"org/name"``, a MAE-style ``.pth``, or
    ``""`` for a randomly initialized ``preset`` (useful for baselines)."""
    from .hub import is_repo_id

    if not model_file_path:
        enc = Classifier(ModelConfig.from_preset(preset, frames=992), num_classes=1)
    elif Path(model_file_path).is_dir() or is_repo_id(model_file_path):
        enc = Classifier.from_pretrained(model_file_path, num_classes=1)
    elif os.path.isfile(model_file_path):
        enc = Classifier.from_mae_checkpoint(model_file_path, num_classes=1)
    else:
        raise FileNotFoundError(f"{model_file_path}: no such checkpoint file or directory, nor a hub repo id")
    model = HearModel(enc)
    return model.to(device) if device else model


def _device(model: HearModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """audio ``(n_sounds, n_samples)`` at ``model.sample_rate`` -> ``(n_sounds, scene_embedding_size)``."""
    spec = model.spectrogram(audio.to(_device(model)))
    emb, _ = model.encoder.embed_windows(spec)  # (B, W, D)
    return emb.mean(dim=1)


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio ``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_timestamps, D)``, timestamps ``(n_sounds,
    n_timestamps)`` in ms, one every ``model.hop_frames * 10`` ms (shifted patch grids; see module doc)."""
    spec = model.spectrogram(audio.to(_device(model)))  # (B, F, T)
    emb, centres = timestamp_embeddings_of_spec(model.encoder, spec, model.hop_frames)
    return emb, centres.unsqueeze(0).expand(emb.shape[0], -1)


__all__ = [
    "HEAR_RATES",
    "HOP_MS",
    "HEAR_SAMPLE_RATE",
    "HearModel",
    "Model",
    "column_embeddings",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
    "resample_on_device",
    "timestamp_embeddings_of_spec",
]
