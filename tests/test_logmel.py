"""The reference LogMel front end against an independent float64 numpy computation of the same recipe
(docs/MASKSPEC.md): pre-emphasis, reflect-padded frames, symmetric Hann(800) zero-padded to 1024 and centered (as
torch.stft places a short window), rfft power, a Kaldi mel bank built here, log, scaling.

Tolerance: the fp32 module vs the fp64 oracle, max |diff| < 1e-3 on the scaled log-mel ((log + 4.5) / 5) for
signals whose bins stay well above the 1e-5 floor; the mel banks agree to 1e-6."""

import math

import numpy as np
import pytest
import torch
from precise import log_mel64
from tolerance import assert_dtype_bound, assert_within

from maskspec_fast.frontend import LogMel, MelSettings, kaldi_mel_banks, log_mel, num_frames

SR, N_FFT, WIN, HOP, N_MELS = 32000, 1024, 800, 320, 128


def np_mel_bank(n_mels=N_MELS, n_fft=N_FFT, sr=SR, fmin=0.0, fmax=15000.0) -> np.ndarray:
    """Kaldi's bank: triangles over mel = 1127 ln(1 + f / 700) on the first n_fft/2 FFT bins, then a zero
    Nyquist column. Written bin by bin on purpose (independent of the vectorized code under test)."""

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    lo, hi = mel(fmin), mel(fmax)
    step = (hi - lo) / (n_mels + 1)
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, center, right = lo + m * step, lo + (m + 1) * step, lo + (m + 2) * step
        for k in range(n_fft // 2):
            x = mel(k * sr / n_fft)
            if left < x <= center:
                bank[m, k] = (x - left) / (center - left)
            elif center < x < right:
                bank[m, k] = (right - x) / (right - center)
    return bank


def np_log_mel(wave: np.ndarray, bank: np.ndarray | None = None) -> np.ndarray:
    """(N,) float64 -> (128, 1 + (N - 1) // 320), all in float64 numpy."""
    x = np.asarray(wave, dtype=np.float64)
    y = x[1:] - 0.97 * x[:-1]  # pre-emphasis, N - 1 samples
    padded = np.pad(y, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n = np.arange(WIN)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (WIN - 1))  # symmetric
    window = np.zeros(N_FFT)
    left = (N_FFT - WIN) // 2
    window[left : left + WIN] = hann
    frames = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(frames)[:, None] * HOP + np.arange(N_FFT)[None, :]
    spec = np.fft.rfft(padded[idx] * window, axis=1)  # (frames, 513)
    power = spec.real**2 + spec.imag**2
    bank = np_mel_bank() if bank is None else bank
    mel = bank @ power.T  # (128, frames)
    return (np.log(mel + 1e-5) + 4.5) / 5.0


def _signal(n: int, batch: int = 1) -> torch.Tensor:
    """Noise + a random tone + a chirp, at a random level: every mel bin well above the 1e-5 floor."""
    t = torch.arange(n, dtype=torch.float64) / SR
    out = []
    for _ in range(batch):
        f0 = 100 + 4000 * torch.rand(()).item()
        chirp = torch.sin(2 * math.pi * (200 * t + 3000 * t**2))
        x = 0.1 * torch.randn(n, dtype=torch.float64) + 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.2 * chirp
        out.append(x * 10 ** (-torch.rand(()).item()))
    return torch.stack(out).float()


def test_mel_bank_matches_numpy():
    ours = kaldi_mel_banks(N_MELS, N_FFT, SR, 0.0, 15000.0)
    assert ours.shape == (128, 513) and ours.dtype == torch.float32
    # the bank is computed in float64 and rounded once to float32: one rounding per weight, plus the two float64
    # computations' own difference (far below a second float32 rounding): the shared rule's bound for 2 terms
    assert_dtype_bound(ours, torch.from_numpy(np_mel_bank()), torch.float32, terms=2, name="mel bank")
    assert (ours[:, -1] == 0).all()
    fmin, fmax = 5.0 * torch.rand(()).item(), 14000 + 2000 * torch.rand(()).item()
    assert_dtype_bound(kaldi_mel_banks(N_MELS, N_FFT, SR, fmin, fmax), torch.from_numpy(np_mel_bank(fmin=fmin, fmax=fmax)),
                       torch.float32, terms=2, name=f"mel bank {fmin:.1f}-{fmax:.0f} Hz")


@pytest.mark.parametrize("n", [320000, 5121, 32000 + 17, 1601])
def test_logmel_matches_numpy(n):
    x = _signal(n, batch=2)
    out = LogMel().eval()(x)
    assert out.shape == (2, N_MELS, num_frames(n)) and out.dtype == torch.float32
    for b in range(2):
        ref = np_log_mel(x[b].double().numpy())
        assert ref.shape == out.shape[1:]
        err = np.abs(out[b].double().numpy() - ref).max()
        assert err < 1e-3, f"max |diff| {err:.2e} (n={n})"


def test_frame_count_ten_seconds():
    assert num_frames(320000) == 1000
    out = LogMel().eval()(torch.randn(320000))
    assert out.shape == (1, 128, 1000)


def test_batch_equals_single():
    lm = LogMel().eval()
    x = _signal(16000 + int(torch.randint(0, 500, ()).item()), batch=3)
    batch = lm(x)
    with torch.no_grad():
        precise = log_mel64(lm, x)
    for b in range(3):  # the batched STFT may sum in another order: the rule against the float64 front end
        assert_within(batch[b : b + 1], lm(x[b]), precise[b : b + 1], terms=1024, name=f"clip {b}")
    assert torch.equal(log_mel(x), batch)  # the functional front end is the same module


def test_jitter_only_in_training(monkeypatch):
    """Training mode draws new band edges per call (fmin up to +10 Hz, fmax within +-1 kHz) and the output is the
    oracle's for those edges; evaluation mode uses the fixed bank and never builds another."""
    import maskspec_fast.frontend.logmel as logmel_module

    calls = []
    real = logmel_module.kaldi_mel_banks

    def spy(n_mels, n_fft, sr, fmin, fmax):
        calls.append((fmin, fmax))
        return real(n_mels, n_fft, sr, fmin, fmax)

    lm = LogMel(fmin_jitter=10.0, fmax_jitter=1000.0)
    plain, nojit = LogMel().eval(), LogMel().train()
    x = _signal(8000)
    monkeypatch.setattr(logmel_module, "kaldi_mel_banks", spy)
    lm.eval()
    a, b = lm(x), lm(x)
    assert torch.equal(a, b) and torch.equal(a, plain(x)) and calls == []  # evaluation: the fixed bank
    lm.train()
    outs = []
    for _ in range(4):
        outs.append(lm(x))
        fmin, fmax = calls[-1]
        assert 0.0 <= fmin <= 10.0 and 14000.0 <= fmax <= 16000.0
        ref = np_log_mel(x[0].double().numpy(), np_mel_bank(fmin=fmin, fmax=fmax))
        assert np.abs(outs[-1][0].double().numpy() - ref).max() < 1e-3
    assert len(calls) == 4 and len(set(calls)) > 1
    assert any(not torch.equal(outs[0], o) for o in outs[1:]), "training mode never jittered the band edges"
    assert torch.equal(nojit(x), plain(x)) and len(calls) == 4  # no jitter: training uses the fixed bank too


def test_settings_and_input_checks():
    s = MelSettings()
    assert (s.n_fft, s.win_length, s.hop_length, s.n_mels, s.fmax) == (1024, 800, 320, 128, 15000.0)
    lm = LogMel()
    with pytest.raises(ValueError, match="too short"):
        lm(torch.randn(100))
    with pytest.raises(ValueError, match="expected a waveform"):
        lm(torch.randn(1, 2, 3000))
