"""Higher-precision twins of package computations, the ``precise`` side of the tolerance rule (``tolerance.py``)
where the package itself only computes in float32."""
from __future__ import annotations

import torch

from maskspec_fast.frontend import LogMel


def log_mel64(lm: LogMel, wave: torch.Tensor) -> torch.Tensor:
    """``lm(wave)`` ``(B, N) -> (B, n_mels, T)`` computed in float64 throughout: the same pre-emphasis, window,
    centred STFT, power, mel bank and ``(log(W P + offset) + shift) / scale``."""
    s = lm.settings
    w = wave.double()
    x = w[:, 1:] - s.preemphasis * w[:, :-1]  # (B, N-1)
    spec = torch.stft(x, n_fft=s.n_fft, hop_length=s.hop_length, win_length=s.win_length,
                      window=lm.window.double(), center=True, pad_mode="reflect", normalized=False,
                      return_complex=True)
    mel = torch.matmul(lm.mel_bank.double(), spec.real.square() + spec.imag.square())
    return (torch.log(mel + s.log_offset) + s.shift) / s.scale
