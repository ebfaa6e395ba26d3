"""The HEAR benchmark API (hearbenchmark.com): ``load_model``, ``get_scene_embeddings``,
``get_timestamp_embeddings``, so the encoder can be evaluated by the standard audio-representation suite.

Scene embedding ``(n_sounds, D)``: fc_norm(mean of patch tokens), averaged over sliding windows for audio longer
than the model's input. Timestamp embeddings ``(n_sounds, n_timestamps, D)``: the patch tokens of each 16-frame
(160 ms) time column averaged over frequency, one every 160 ms, stamped at the column centre (ms).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from .config import ModelConfig
from .frontend.logmel import SAMPLE_RATE, LogMel
from .model import Classifier, Model

HOP_MS = 10.0  # one log-mel frame = 320 samples at 32 kHz


class HearModel(nn.Module):
    """An encoder with the attributes HEAR reads: ``sample_rate``, ``scene_embedding_size``,
    ``timestamp_embedding_size``."""

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: Classifier):
        super().__init__()
        self.encoder = encoder.eval()
        self.frontend = LogMel().eval()
        self.scene_embedding_size = encoder.config.embed_dim
        self.timestamp_embedding_size = encoder.config.embed_dim

    def spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() != 2:
            raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got {tuple(audio.shape)}")
        p = self.encoder.config.patch_size
        min_samples = p * 320 + 1  # at least one whole patch of frames
        if audio.shape[1] < min_samples:
            audio = torch.nn.functional.pad(audio, (0, min_samples - audio.shape[1]))
        return self.frontend(audio.float())


def load_model(model_file_path: str = "", preset: str = "tiny", device: str | None = None) -> HearModel:
    """A saved Model/Classifier directory (save_pretrained), a MAE-style ``.pth``, or ``""`` for a randomly
    initialized ``preset`` (useful for baselines)."""
    if not model_file_path:
        enc = Classifier(ModelConfig.from_preset(preset, frames=992), num_classes=1)
    elif Path(model_file_path).is_dir():
        enc = Classifier.from_pretrained(model_file_path, num_classes=1)
    elif os.path.isfile(model_file_path):
        enc = Classifier.from_mae_checkpoint(model_file_path, num_classes=1)
    else:
        raise FileNotFoundError(f"{model_file_path}: no such checkpoint file or directory")
    model = HearModel(enc)
    return model.to(device) if device else model


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """audio ``(n_sounds, n_samples)`` at 32 kHz -> ``(n_sounds, scene_embedding_size)``."""
    spec = model.spectrogram(audio.to(next(model.parameters()).device))
    emb, _ = model.encoder.embed_windows(spec)  # (B, W, D)
    return emb.mean(dim=1)


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """audio ``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_timestamps, D)``, timestamps ``(n_sounds,
    n_timestamps)`` in milliseconds (centre of each 160 ms patch column)."""
    enc = model.encoder
    spec = model.spectrogram(audio.to(next(model.parameters()).device))
    p, win = enc.config.patch_size, enc.config.frames
    t = spec.shape[-1] // p * p
    columns = []
    for start in range(0, t, win):  # non-overlapping windows; the last may be shorter (positions cropped)
        chunk = spec[..., start : min(start + win, t)]
        if chunk.shape[-1] < p:
            break
        tokens = enc.forward_features(chunk)[:, 1:]  # (B, gf*gt, D)
        gf, gt = enc.config.grid_f, chunk.shape[-1] // p
        columns.append(enc.fc_norm(tokens.reshape(tokens.shape[0], gf, gt, -1).mean(dim=1)))  # (B, gt, D)
    emb = torch.cat(columns, dim=1)  # (B, n_timestamps, D)
    centres = (torch.arange(emb.shape[1], dtype=torch.float32) * p + p / 2) * HOP_MS
    return emb, centres.unsqueeze(0).expand(emb.shape[0], -1).to(emb.device)


__all__ = ["HearModel", "get_scene_embeddings", "get_timestamp_embeddings", "load_model", "Model"]
