"""The log-mel front end as plain convolutions: what goes inside an exported (ONNX / torch.export) graph.

:class:`LogMel` (the reference) computes the STFT with ``torch.stft``, whose export needs complex tensors
(ONNX ``DFT`` from opset 17, with complex-layout pitfalls across runtimes). Here the STFT is one strided
``conv1d`` whose fixed weights are the windowed DFT basis, so the graph holds only Conv, Pad, Mul, Add, MatMul
and Log, ops every runtime has:

wave (B, N)
  -> pre-emphasis   y[n] = x[n+1] - 0.97 x[n]                          (B, N-1)     conv1d, kernel [-0.97, 1]
  -> reflect pad    400 samples each side                             (B, N+799)
  -> windowed DFT   Re X_k[t] = sum_m w[m] cos(2 pi k (m + 112) / 1024) y_pad[320 t + m],  Im: -sin   (m < 800)
                                                                      (B, 2K, T)   conv1d, stride 320
  -> power          |X_k|^2 = Re^2 + Im^2                             (B, K, T)
  -> mel            W[:, bins] P                                      (B, 128, T)
  -> log            (log(mel + 1e-5) + 4.5) / 5

``T = 1 + (N - 1) // 320`` as for :class:`LogMel`. Why 400 and 112: ``torch.stft(center=True)`` reflect-pads by
``n_fft / 2 = 512`` and centres the 800-sample Hann window in the 1024-sample frame (zeros at offsets 0..111 and
912..1023); the window's zeros never reach the outer 112 samples of either pad, so padding by 400 with an
800-tap kernel gives the same frames (reflect padding at distance d from the edge is ``y[d]`` whatever its
length). Only the ``K`` FFT bins that some mel filter reads are computed (481 of 513 for the 0-15 kHz bank):
a bin that no filter reads cannot change the output.

Cost: ``2 K * 800`` multiply-adds per frame (~1.5 GFLOP per 10 s), against ``O(n_fft log n_fft)`` for an FFT
and ~7.5 GFLOP for the tiny encoder's forward on the same 10 s (~70 for base): the price of a graph that every
runtime runs.
The reference stays :class:`LogMel`; ``tests/test_export.py`` holds the two together.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .logmel import MelSettings, kaldi_mel_banks


def dft_basis(settings: MelSettings, bins: torch.Tensor) -> torch.Tensor:
    """Windowed DFT rows ``(2K, 1, win_length)`` fp32: ``K`` cosine rows then ``K`` minus-sine rows for the FFT
    bins ``bins (K,)``, each times the symmetric Hann window, with the phase of a window centred in ``n_fft``."""
    s = settings
    offset = (s.n_fft - s.win_length) // 2  # where torch.stft puts the window inside the frame
    m = torch.arange(s.win_length, dtype=torch.float64) + offset  # (W,) sample index inside the n_fft frame
    phase = 2 * math.pi * bins.double().unsqueeze(1) * m.unsqueeze(0) / s.n_fft  # (K, W)
    window = torch.hann_window(s.win_length, periodic=False, dtype=torch.float64)
    basis = torch.cat([torch.cos(phase), -torch.sin(phase)], dim=0) * window  # (2K, W)
    return basis.float().unsqueeze(1)


class DFTLogMel(nn.Module):
    """Waveform ``(B, N)`` fp32 at ``sample_rate`` -> log-mel ``(B, n_mels, 1 + (N-1)//hop)``, the numbers of
    :class:`~maskspec_fast.frontend.LogMel` (fixed bank, evaluation mode) from convolutions only (module doc).

    Needs ``N >= n_fft/2 - (n_fft - win_length)/2 + 2`` (the reflect pad must fit; 402 samples at 32 kHz); a model
    needs one patch anyway (:data:`~maskspec_fast.frontend.MIN_SAMPLES`)."""

    def __init__(self, settings: MelSettings | None = None):
        super().__init__()
        self.settings = s = settings or MelSettings()
        bank = kaldi_mel_banks(s.n_mels, s.n_fft, s.sample_rate, s.fmin, s.fmax)  # (M, n_fft/2 + 1)
        bins = torch.nonzero(bank.abs().sum(0) > 0).squeeze(1)  # (K,) bins some filter reads
        self.num_bins = int(bins.numel())
        self.pad = s.n_fft // 2 - (s.n_fft - s.win_length) // 2  # 400: see module doc
        self.register_buffer("basis", dft_basis(s, bins), persistent=False)  # (2K, 1, W)
        self.register_buffer("mel_bank", bank[:, bins].contiguous(), persistent=False)  # (M, K)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        s = self.settings
        x = (wave[:, 1:] - s.preemphasis * wave[:, :-1]).unsqueeze(1)  # (B, 1, N-1): Slice/Mul/Sub, no 2-tap Conv
        x = F.pad(x, (self.pad, self.pad), mode="reflect")  # (B, 1, N-1 + 2*pad)
        spec = F.conv1d(x, self.basis, stride=s.hop_length)  # (B, 2K, T)
        re, im = spec[:, : self.num_bins], spec[:, self.num_bins :]
        power = re * re + im * im  # (B, K, T)
        mel = torch.matmul(self.mel_bank, power)  # (M, K) @ (B, K, T) -> (B, M, T)
        return (torch.log(mel + s.log_offset) + s.shift) / s.scale


__all__ = ["DFTLogMel", "dft_basis"]
