"""Decoding, down-mixing, resampling, cropping and the error reports of maskspec_fast.frontend.audio."""

import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch
from tolerance import assert_dtype_bound

from maskspec_fast.frontend import LogMel, log_mel, num_frames
from maskspec_fast.frontend.audio import (
    MIN_SAMPLES,
    SAMPLE_RATE,
    AudioFileError,
    crop_or_pad,
    load_audio,
    resample,
)

SUBTYPES = {"wav": "FLOAT", "flac": "PCM_24", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}


def _tone(freq: float, sr: int, n: int, amp: float = 0.5, phase: float = 0.0) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / sr + phase)


def _dominant(x: torch.Tensor | np.ndarray, sr: int) -> float:
    x = np.asarray(x, dtype=np.float64)
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / sr)[spec.argmax()])


def _rand_freq(lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(()).item())


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_decode_round_trip(tmp_path, ext):
    freq = _rand_freq(300, 3000)
    n = SAMPLE_RATE  # 1 s
    path = tmp_path / f"tone.{ext}"
    sf.write(str(path), _tone(freq, SAMPLE_RATE, n).astype(np.float32), SAMPLE_RATE, subtype=SUBTYPES[ext])
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    # lossy codecs may add or drop a codec frame of padding; the lossless ones are exact
    assert wave.shape[0] == n if ext in ("wav", "flac") else abs(wave.shape[0] - n) <= 2304
    assert abs(_dominant(wave, SAMPLE_RATE) - freq) < 3.0, f"{ext}: tone at {freq:.1f} Hz moved"
    rms = float(wave.pow(2).mean().sqrt())
    assert abs(rms - 0.5 / math.sqrt(2)) < 0.05 * 0.5, f"{ext}: level changed (rms {rms:.4f})"
    if ext in ("wav", "flac"):
        ref = torch.from_numpy(_tone(freq, SAMPLE_RATE, n)).float()
        assert (wave - ref).abs().max() < (1e-6 if ext == "wav" else 2e-6)


@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000])
def test_load_resamples_to_32k(tmp_path, sr):
    freq = _rand_freq(200, 0.8 * min(sr, SAMPLE_RATE) / 2)
    n = int(sr * 0.77) + int(torch.randint(0, 50, ()).item())  # odd lengths
    path = tmp_path / f"tone_{sr}.flac"
    sf.write(str(path), _tone(freq, sr, n).astype(np.float32), sr, subtype="PCM_24")
    wave = load_audio(path)
    assert wave.shape == (math.ceil(n * SAMPLE_RATE / sr),)
    assert abs(_dominant(wave, SAMPLE_RATE) - freq) < 3.0
    # away from the edges the resampled tone is the analytic tone at 32 kHz (PCM_24 quantization ~1e-7)
    ref = torch.from_numpy(_tone(freq, SAMPLE_RATE, wave.shape[0])).float()
    assert (wave - ref)[2000:-2000].abs().max() < 1e-4


@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000, 96000])
def test_resample_accuracy_and_shapes(sr):
    """The documented accuracy: passband error <= 6e-5 up to 0.875 x the lower Nyquist (fp64)."""
    b, n = 3, int(sr * 0.5) + int(torch.randint(0, 97, ()).item())
    nyq = min(sr, SAMPLE_RATE) / 2
    freqs = [_rand_freq(50, 0.875 * nyq) for _ in range(b)]
    phases = torch.rand(b).tolist()
    x = torch.from_numpy(
        np.stack([_tone(f, sr, n, 1.0, 6 * p) for f, p in zip(freqs, phases, strict=True)])
    )  # (B, N) fp64
    y = resample(x, sr, SAMPLE_RATE)
    m = math.ceil(n * SAMPLE_RATE / sr)
    assert y.shape == (b, m) and y.dtype == torch.float64
    ref = torch.from_numpy(
        np.stack([_tone(f, SAMPLE_RATE, m, 1.0, 6 * p) for f, p in zip(freqs, phases, strict=True)])
    )
    edge = 1500  # the filter's support near the ends sees the zero padding
    err = (y - ref)[:, edge:-edge].abs().max().item()
    assert err < 8e-5, f"passband error {err:.2e} from {sr} Hz"
    # batched == one row at a time; (N,) in gives (M,) out; fp32 keeps fp32
    for i in range(b):
        assert torch.equal(resample(x[i], sr, SAMPLE_RATE), y[i])  # scipy's upfirdn filters each row alone: exact
    assert resample(x.float(), sr, SAMPLE_RATE).dtype == torch.float32


@pytest.mark.parametrize("sr", [44100, 48000])
def test_resample_rejects_aliases(sr):
    """A tone between 17 kHz and the input Nyquist would alias below 15 kHz (into the mel range): >= 80 dB down."""
    freq = _rand_freq(17000, 0.95 * sr / 2)
    y = resample(torch.from_numpy(_tone(freq, sr, sr, 1.0)), sr, SAMPLE_RATE)
    level = 20 * math.log10(y[2000:-2000].pow(2).mean().sqrt().item() / math.sqrt(0.5))
    assert level < -80, f"{freq:.0f} Hz at {sr} Hz leaks at {level:.1f} dB"


def test_resample_identity_and_errors():
    x = torch.randn(5, 1000)
    assert torch.equal(resample(x, 32000, 32000), x)
    assert resample(torch.zeros(2, 0), 16000, 32000).shape == (2, 0)
    with pytest.raises(ValueError, match="positive"):
        resample(x, 0, 32000)
    with pytest.raises(ValueError, match="integers"):
        resample(x, 22050.5, 32000)


def test_stereo_downmix(tmp_path):
    n = 20000
    left, right = (
        _tone(_rand_freq(300, 1000), SAMPLE_RATE, n),
        _tone(_rand_freq(2000, 5000), SAMPLE_RATE, n, 0.3),
    )
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], 1).astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.shape == (n,)
    l32, r32 = (torch.from_numpy(c.astype(np.float32)).double() for c in (left, right))  # what the file holds
    assert_dtype_bound(wave, (l32 + r32) / 2, torch.float32, terms=2, name="down-mix")  # one add, one halving


def test_log_mel_resamples_other_rates():
    x = torch.randn(2, 16000)
    out = log_mel(x, sample_rate=16000)
    assert out.shape == (2, 128, num_frames(32000))
    assert torch.equal(out, LogMel().eval()(resample(x, 16000, SAMPLE_RATE)))  # the same two steps: exact


# -------------------------------------------------------------------------------------------------- errors
def _expect(path, fragment, **kwargs):
    with pytest.raises(AudioFileError) as info:
        load_audio(path, **kwargs)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(path) in str(err) and err.path == str(path), f"message does not name the file: {err}"
    assert fragment in err.problem and fragment in str(err), f"message does not name the problem: {err}"
    clone = pickle.loads(pickle.dumps(err))  # crosses DataLoader worker processes intact
    assert (clone.path, clone.problem) == (err.path, err.problem)
    return err


def test_error_missing(tmp_path):
    _expect(tmp_path / "nope.wav", "not found")


def test_error_empty_bytes(tmp_path):
    path = tmp_path / "empty.flac"
    path.write_bytes(b"")
    _expect(path, "0 bytes")


def test_error_zero_samples(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert path.stat().st_size > 0
    _expect(path, "0 samples")


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_error_corrupt(tmp_path, ext):
    path = tmp_path / f"garbage.{ext}"
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ()).item()))
    path.write_bytes(
        b"\x00\x01garbage" + bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
    )
    _expect(path, "corrupt")


def test_error_truncated_header(tmp_path):
    good = tmp_path / "good.flac"
    sf.write(str(good), _tone(440, SAMPLE_RATE, 8000).astype(np.float32), SAMPLE_RATE)
    bad = tmp_path / "cut.flac"
    bad.write_bytes(good.read_bytes()[:20])
    _expect(bad, "corrupt")


def test_error_unsupported_extension(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    _expect(path, "unsupported extension")


def test_error_nan_inf(tmp_path):
    x = _tone(440, SAMPLE_RATE, 8000).astype(np.float32)
    x[int(torch.randint(0, 8000, ()).item())] = np.nan
    x[5] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(str(path), x, SAMPLE_RATE, subtype="FLOAT")
    _expect(path, "NaN/Inf")


def test_error_too_short(tmp_path):
    assert MIN_SAMPLES == 16 * 320 + 1
    ok, short = tmp_path / "ok.wav", tmp_path / "short.wav"
    sf.write(str(ok), np.full(MIN_SAMPLES, 0.1, np.float32), SAMPLE_RATE, subtype="FLOAT")
    sf.write(str(short), np.full(MIN_SAMPLES - 1, 0.1, np.float32), SAMPLE_RATE, subtype="FLOAT")
    assert load_audio(ok, min_samples=MIN_SAMPLES).shape == (MIN_SAMPLES,)
    assert load_audio(short).shape == (MIN_SAMPLES - 1,)  # only checked when asked
    _expect(short, "too short", min_samples=MIN_SAMPLES)
    # the check applies after resampling: 2560 samples at 16 kHz -> 5120 at 32 kHz
    low = tmp_path / "short16k.wav"
    sf.write(str(low), np.full(2560, 0.1, np.float32), 16000, subtype="FLOAT")
    err = _expect(low, "too short", min_samples=MIN_SAMPLES)
    assert "5120" in err.problem


# ----------------------------------------------------------------------------------------------- crop/pad
def test_crop_or_pad():
    n, k = 1000 + int(torch.randint(0, 100, ()).item()), 257
    x = torch.randn(n)
    assert torch.equal(crop_or_pad(x, k), x[:k])  # evaluation: the start
    padded = crop_or_pad(x, n + 37)
    assert torch.equal(padded[:n], x) and torch.equal(padded[n:], torch.zeros(37))
    assert torch.equal(crop_or_pad(x, n), x)
    seed = int(torch.randint(0, 2**31, ()).item())
    starts = set()
    for i in range(20):
        g = torch.Generator().manual_seed(seed + i)
        y = crop_or_pad(x, k, random=True, generator=g)
        s = int(torch.nonzero(x == y[0])[0])
        assert torch.equal(y, x[s : s + k])  # a contiguous window
        starts.add(s)
        assert torch.equal(
            y, crop_or_pad(x, k, random=True, generator=torch.Generator().manual_seed(seed + i))
        )
    assert len(starts) > 10
    b = torch.randn(3, n)
    assert crop_or_pad(b, k, random=True).shape == (3, k)  # one window for the whole batch
    assert crop_or_pad(b, n + 5).shape == (3, n + 5)
    with pytest.raises(ValueError):
        crop_or_pad(x, 0)
