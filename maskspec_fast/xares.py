"""The X-ARES encoder contract (github.com/jimbozhang/xares): ``python -m xares.run maskspec_fast/xares.py
src/tasks/*.py`` loads this module by path and takes its one attribute whose name ends in ``Encoder``.

``MaskSpecEncoder()`` (no arguments, as X-ARES builds it) reads its checkpoint from ``MASKSPEC_CHECKPOINT``: a
``save_pretrained`` directory, a hub id ``org/name`` or a MAE-style ``.pth``; ``random:PRESET`` (e.g.
``random:base``) asks for a randomly initialised encoder (a baseline). Neither an argument nor the variable is a
``ValueError`` saying so: never a random model by accident.

Contract: ``sampling_rate`` 32000 (X-ARES resamples every task to it), ``output_dim`` = the encoder width ``D``,
``hop_size_in_ms`` = ``hop_frames * 10`` (``MASKSPEC_HOP_FRAMES``, default 4: 40 ms, as Dasheng and our HEAR
wrapper); ``forward(audio (B, T)) -> (B, T', D)`` with ``T' = (1 + (T - 1) // 320) // hop_frames``, about
``duration / hop``.

Frame ``k`` is the HEAR timestamp embedding (:func:`maskspec_fast.inference.timestamp_embeddings_of_spec`: the
encoder's own patch-column embeddings on ``16 / hop_frames`` shifted patch grids) of the 160-ms column centred on
``(k + 1/2) * hop``, the middle of X-ARES's label frame ``[k * hop, (k + 1) * hop)``: the log-mel is padded with
``(16 - hop_frames) / 2`` frames of silence (zeros in the waveform) on each side, so the first and last frames
exist and no frame lags its label.

Long inputs (X-ARES asks for up to 10 minutes) run in bounded memory: the log-mel is computed in chunks of
``chunk_frames`` frames (exact: each chunk reads its frames' full STFT support), the encoder in windows of
``config.frames``; what grows with the input is only the input itself, the log-mel (0.4x its size) and the output.
Inputs longer than ``max_seconds`` (default 3600) are refused with a ``ValueError`` before anything is allocated,
as are non-mono shapes ``(B, C, T)``, empty audio and NaN/Inf samples. Clips shorter than one patch (0.16 s) are
zero-padded to it (their ``T'`` counts the padded frames). The sample rate is not in the call: X-ARES resamples to
:attr:`sampling_rate` itself.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .frontend.constants import FRAME_MS, HOP_LENGTH, MIN_SAMPLES, N_FFT, SAMPLE_RATE
from .frontend.logmel import LogMel
from .inference import load_encoder, timestamp_embeddings_of_spec
from .model import Classifier

CHECKPOINT_ENV = "MASKSPEC_CHECKPOINT"
HOP_ENV = "MASKSPEC_HOP_FRAMES"


def _load(checkpoint: str | None) -> Classifier:
    from .config import ModelConfig

    spec = checkpoint or os.environ.get(CHECKPOINT_ENV, "")
    if not spec:
        raise ValueError(f"no checkpoint: set {CHECKPOINT_ENV}=DIR|org/name|FILE.pth (or random:base for a randomly "
                         "initialised baseline), or pass checkpoint=")
    if spec.startswith("random:"):
        return Classifier(ModelConfig.from_preset(spec.split(":", 1)[1], frames=992), num_classes=1).eval()
    return load_encoder(spec, "cpu")


def log_mel_chunked(frontend: LogMel, wave: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """``frontend(wave)`` ``(B, M, 1 + (N-1)//hop)`` computed ``chunk_frames`` frames at a time.

    Chunk ``[a, b)`` runs the front end on ``wave[(a - c) * hop : (b - 1 + c) * hop + 1]`` with ``c = ceil(n_fft / 2
    / hop)`` frames of context and keeps its frames ``c .. c + b - a``: each kept frame sees its full
    ``n_fft``-sample support, so it is the frame of the whole-signal transform (the reflect padding only ever
    touches the true ends, which the first and last chunks keep). Peak memory: the STFT of one chunk."""
    n, hop = wave.shape[-1], frontend.settings.hop_length
    total = 1 + (n - 1) // hop
    if total <= chunk_frames:
        return frontend(wave)
    c = -(-frontend.settings.n_fft // 2 // hop)
    out = []
    for a in range(0, total, chunk_frames):
        b = min(a + chunk_frames, total)
        s = max(a - c, 0)
        e = min((b - 1 + c) * hop + 1, n) if b < total else n
        out.append(frontend(wave[:, s * hop : e])[..., a - s : a - s + b - a])
    return torch.cat(out, dim=-1)  # (B, M, total)


class MaskSpecEncoder(nn.Module):
    """A MaskSpec encoder for X-ARES: ``audio (B, T)`` at 32 kHz -> ``(B, T', D)`` frame embeddings every
    ``hop_size_in_ms`` (module doc)."""

    sampling_rate = SAMPLE_RATE

    def __init__(self, checkpoint: str | None = None, hop_frames: int | None = None, max_seconds: float = 3600.0,
                 chunk_frames: int = 6000):
        super().__init__()
        self.encoder = _load(checkpoint).eval()
        self.frontend = LogMel().eval()
        p = self.encoder.config.patch_size
        self.hop_frames = int(hop_frames or os.environ.get(HOP_ENV, 4))
        if self.hop_frames < 1 or p % self.hop_frames or (p - self.hop_frames) % 2:
            raise ValueError(f"hop_frames={self.hop_frames} must divide the patch size {p} (2, 4, 8 or {p})")
        self.output_dim = int(self.encoder.config.embed_dim)
        self.hop_size_in_ms = self.hop_frames * FRAME_MS
        self.max_samples = int(max_seconds * SAMPLE_RATE)
        self.chunk_frames = chunk_frames

    def check(self, audio: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` or ``(T,)`` float audio -> ``(B, T)``; a ``ValueError`` naming the problem otherwise."""
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise ValueError(f"audio must be mono (B, T) at {self.sampling_rate} Hz, got shape {tuple(audio.shape)}; "
                             "average the channels of multi-channel audio first")
        if audio.shape[1] == 0 or audio.shape[0] == 0:
            raise ValueError(f"empty audio: shape {tuple(audio.shape)}")
        if audio.shape[1] > self.max_samples:
            raise ValueError(f"audio of {audio.shape[1] / self.sampling_rate:.0f} s is longer than max_seconds="
                             f"{self.max_samples / self.sampling_rate:.0f}; cut it, or raise max_seconds")
        bad = ~torch.isfinite(audio).all(dim=1)
        if bad.any():
            raise ValueError(f"audio has NaN/Inf samples in clip(s) {bad.nonzero().flatten().tolist()}")
        return audio

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        audio = self.check(audio)
        p = self.encoder.config.patch_size
        side = (p - self.hop_frames) // 2 * HOP_LENGTH  # samples of silence each side: frames centred on labels
        device = next(self.encoder.parameters()).device
        with torch.inference_mode():
            wave = audio.to(device=device, dtype=torch.float32)
            short = max(0, MIN_SAMPLES - wave.shape[1], N_FFT // 2 + 2 - wave.shape[1])
            wave = F.pad(wave, (side, side + short))  # (B, side + T + side [+ short])
            spec = log_mel_chunked(self.frontend, wave, self.chunk_frames)  # (B, M, n_frames + 2 * side / 320)
            emb, _ = timestamp_embeddings_of_spec(self.encoder, spec, self.hop_frames)  # (B, T', D)
        return emb  # T' = n_frames // hop_frames: (n_frames + 2 * side - p) // hop + 1 columns fit


__all__ = ["CHECKPOINT_ENV", "HOP_ENV", "MaskSpecEncoder", "log_mel_chunked"]
