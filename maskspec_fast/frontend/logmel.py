"""Reference log-mel front end (the PaSST/MaskSpec recipe, ``docs/MASKSPEC.md``, "Front end"), batched, CPU or GPU.

wave (B, N) at 32 kHz
  -> pre-emphasis   y[n] = x[n+1] - 0.97 x[n]                        (B, N-1)
  -> STFT           n_fft 1024, Hann(800, symmetric), hop 320, centered with reflect padding
  -> power          |X|^2                                            (B, 513, frames), frames = 1 + (N-1)//320
  -> mel            Kaldi-style bank (128, 513)                      (B, 128, frames)
  -> log            log(mel + 1e-5), then (x + 4.5) / 5
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .constants import HOP_LENGTH, N_FFT, N_MELS, PATCH_FRAMES, SAMPLE_RATE, WIN_LENGTH


@dataclass(frozen=True)
class MelSettings:
    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    win_length: int = WIN_LENGTH
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS
    fmin: float = 0.0
    fmax: float = 15000.0  # sr/2 - 1 kHz
    preemphasis: float = 0.97
    log_offset: float = 1e-5
    shift: float = 4.5
    scale: float = 5.0


def mel_scale(freq: torch.Tensor | float) -> torch.Tensor:
    """HTK/Kaldi mel scale: 1127 ln(1 + f / 700)."""
    f = torch.as_tensor(freq, dtype=torch.float64)
    return 1127.0 * torch.log1p(f / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, fmin: float, fmax: float) -> torch.Tensor:
    """Triangles in mel space over the first ``n_fft/2`` FFT bins, plus a zero column for Nyquist.

    Bin centers are equally spaced in mel between mel(fmin) and mel(fmax); filter i rises from center i-1 to
    center i and falls to center i+1 (edges included as centers -1 and n). Returns ``(n_mels, n_fft//2 + 1)`` fp32.
    """
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= sr/2, got fmin={fmin}, fmax={fmax}, sr={sample_rate}")
    n_bins = n_fft // 2
    mel_lo, mel_hi = mel_scale(fmin), mel_scale(fmax)
    delta = (mel_hi - mel_lo) / (n_mels + 1)
    i = torch.arange(n_mels, dtype=torch.float64).unsqueeze(1)  # (M, 1)
    left, center, right = mel_lo + i * delta, mel_lo + (i + 1) * delta, mel_lo + (i + 2) * delta
    mel = mel_scale(torch.arange(n_bins, dtype=torch.float64) * (sample_rate / n_fft)).unsqueeze(0)  # (1, n_bins)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    bank = torch.clamp(torch.minimum(up, down), min=0.0)  # (M, n_bins)
    return torch.cat([bank, torch.zeros(n_mels, 1, dtype=bank.dtype)], dim=1).float()  # (M, n_bins + 1)


def num_frames(num_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Frames of a centered STFT after the 2-tap pre-emphasis (N-1 samples): 1 + (N - 1) // hop (1000 for 10 s at 32 kHz)."""
    return 1 + (num_samples - 1) // hop_length


def model_frames(num_samples: int, patch: int = PATCH_FRAMES) -> int:
    """Frames a model built for clips of ``num_samples`` takes: :func:`num_frames` rounded down to whole patches
    (the model drops the partial patch at the end; 992 for 10 s at 32 kHz)."""
    return num_frames(num_samples) // patch * patch


class LogMel(nn.Module):
    """Waveform ``(B, N)`` or ``(N,)`` at ``sample_rate`` -> log-mel ``(B, n_mels, frames)`` (fp32).

    ``fmin_jitter`` / ``fmax_jitter`` (Hz) shift the band edges per call in training mode, as MaskSpec's
    pre-training does (fmin up by U(0, 10) Hz, fmax by U(-1000, 1000) Hz); evaluation uses the fixed bank.
    """

    def __init__(self, settings: MelSettings | None = None, fmin_jitter: float = 0.0, fmax_jitter: float = 0.0):
        super().__init__()
        self.settings = s = settings or MelSettings()
        self.fmin_jitter, self.fmax_jitter = fmin_jitter, fmax_jitter
        self.register_buffer("window", torch.hann_window(s.win_length, periodic=False), persistent=False)
        self.register_buffer(
            "mel_bank", kaldi_mel_banks(s.n_mels, s.n_fft, s.sample_rate, s.fmin, s.fmax), persistent=False
        )

    def bank(self) -> torch.Tensor:
        """The mel bank ``(n_mels, n_fft/2+1)`` for this call: the fixed one, or in training mode with jitter a
        freshly drawn one (fmin/fmax shifted; draws from the global torch RNG)."""
        s = self.settings
        if not self.training or (self.fmin_jitter == 0 and self.fmax_jitter == 0):
            return self.mel_bank
        fmin = s.fmin + float(torch.randint(0, int(self.fmin_jitter) + 1, ()).item()) if self.fmin_jitter else s.fmin
        fmax = s.fmax + (float(torch.rand(()).item()) * 2 - 1) * self.fmax_jitter
        fmax = min(fmax, s.sample_rate / 2)
        return kaldi_mel_banks(s.n_mels, s.n_fft, s.sample_rate, fmin, fmax).to(self.mel_bank.device)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if wave.dim() != 2:
            raise ValueError(f"expected a waveform (B, N) or (N,), got shape {tuple(wave.shape)}")
        if wave.shape[-1] < 2 + s.n_fft // 2:
            raise ValueError(f"waveform of {wave.shape[-1]} samples is too short for n_fft={s.n_fft}")
        x = wave.float()
        # y[n] = x[n+1] - 0.97 x[n]: one elementwise pass (a 2-tap conv1d did the same 60x slower on a CPU: 7 % of
        # a tiny model's embedding time)
        x = torch.sub(x[:, 1:], x[:, :-1], alpha=s.preemphasis)  # (B, N-1)
        spec = torch.stft(
            x,
            n_fft=s.n_fft,
            hop_length=s.hop_length,
            win_length=s.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            normalized=False,
            return_complex=True,
        )  # (B, n_fft/2+1, frames)
        power = spec.real.square() + spec.imag.square()
        return self.from_power(power)

    def from_power(self, power: torch.Tensor) -> torch.Tensor:
        """Power spectrogram ``(B, n_fft/2+1, T)`` -> scaled log-mel ``(B, n_mels, T)``:
        ``(log(W P + eps) + shift) / scale`` with ``W = bank()`` (for pipelines that make the power elsewhere)."""
        s = self.settings
        mel = torch.matmul(self.bank(), power)  # (M, F) @ (B, F, T) -> (B, M, T), a fresh tensor
        if mel.requires_grad:
            return (torch.log(mel + s.log_offset) + s.shift) / s.scale
        # in place: on a 2-core CPU the temporaries of the out-of-place chain cost as much as the log itself
        return mel.add_(s.log_offset).log_().add_(s.shift).div_(s.scale)


_DEFAULT: dict[tuple[str, int], LogMel] = {}


def log_mel(wave: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Functional front end: ``(B, N)`` or ``(N,)`` waveform -> ``(B, 128, frames)`` log-mel (fixed bank).

    A waveform at another rate is resampled to 32 kHz first (:func:`maskspec_fast.frontend.audio.resample`).
    """
    if sample_rate != SAMPLE_RATE:
        from .audio import resample

        wave = resample(wave, sample_rate, SAMPLE_RATE)
    key = (str(wave.device), SAMPLE_RATE)
    if key not in _DEFAULT:
        _DEFAULT[key] = LogMel().to(wave.device).eval()
    return _DEFAULT[key](wave)


__all__ = ["LogMel", "MelSettings", "kaldi_mel_banks", "log_mel", "mel_scale", "model_frames", "num_frames",
           "SAMPLE_RATE"]
