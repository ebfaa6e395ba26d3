"""Procedural labeled sounds, generated on the fly: a data set that needs no download, for tests, demos and
smoke-training (a model must learn spectro-temporal shape to tell the classes apart).

Every clip = background noise (white/pink mix, -65..-45 dB RMS) + one sound event of a class:
  * event duration ``U(0.25, 0.9) * clip``, onset uniform in what is left, raised-cosine attack 5-50 ms and release
    10-200 ms (same distributions for every class);
  * the event is normalized to unit RMS over its duration, then scaled to a level ``U(-35, -12)`` dB RMS
    (same range for every class): loudness and duration carry no class information by construction;
  * pitch, rates, bandwidths, colors ... drawn per clip (see ``_CLASSES``).
Clip ``index`` is a deterministic function of ``(seed, index)``; labels are balanced exactly in every block of
``num_classes`` consecutive indices (a seeded permutation per block). Cost: ~2-5 ms per 2.56 s clip (numpy,
one busy core).
"""

from __future__ import annotations

import csv
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..frontend.audio import SAMPLE_RATE
from .base import AudioDataset


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _partials(rng, phase: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """sum_k amps[k] sin((k+1) theta + phi) by the recurrence s_{k+1} = 2 cos(theta) s_k - s_{k-1}
    (two transcendental calls instead of K: the generator must stay far below 10 ms per clip)."""
    phi = rng.uniform(0, 2 * np.pi)
    two_cos = 2 * np.cos(phase)
    s_prev, s = np.full_like(phase, math.sin(phi)), np.sin(phase + phi)  # k = 0, 1
    out = amps[0] * s
    for a in amps[1:]:
        s_prev, s = s, two_cos * s - s_prev
        out += a * s
    return out


@lru_cache(maxsize=8)
def _pink_filter(sr: int) -> tuple[np.ndarray, np.ndarray]:
    """IIR with |H(f)|^2 ~ 1/f from ~20 Hz to sr/2 (within ~2 dB): real poles at 10 * 4^i Hz and zeros an octave
    above each (-6 dB per pole-zero pair spanning two octaves = -3 dB/octave), matched-z."""
    fp = np.array([10.0 * 4.0**i for i in range(12) if 10.0 * 4.0**i < sr / 2])
    return np.poly(np.exp(-2 * np.pi * 2 * fp / sr)), np.poly(np.exp(-2 * np.pi * fp / sr))


def _colored_noise(rng, n: int, sr: int, alpha: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f^alpha: alpha 0 white, 1 pink, 2 brown (leaky integrator, 20 Hz)."""
    from scipy.signal import lfilter

    x = rng.standard_normal(n)
    if alpha == 0:
        return x
    if alpha == 1:
        return lfilter(*_pink_filter(sr), x)
    return lfilter([1.0], [1.0, -math.exp(-2 * np.pi * 20.0 / sr)], x)


def _resonators(x: np.ndarray, sr: int, freqs, decays, gains=None) -> np.ndarray:
    """Sum of two-pole resonators (impulse response ~ exp(-t / decay) sin(2 pi f t)) applied to ``x``."""
    from scipy.signal import lfilter

    out = np.zeros_like(x)
    for i, (f, d) in enumerate(zip(freqs, decays, strict=True)):
        r, w = math.exp(-1.0 / (d * sr)), 2 * math.pi * f / sr
        out += (1.0 if gains is None else gains[i]) * lfilter(
            [math.sin(w)], [1.0, -2 * r * math.cos(w), r * r], x
        )
    return out


# ------------------------------------------------------------------------------------------ event generators
# Each takes (rng, n, sr) and returns an event of n samples (any scale; normalized afterwards).
def _harmonic(rng, n, sr):
    f0 = _loguniform(rng, 80, 1000)
    k = max(1, min(int(rng.integers(4, 13)), int(0.45 * sr / f0)))
    amps = np.arange(1, k + 1, dtype=np.float64) ** -rng.uniform(0.5, 2.0)
    return _partials(rng, 2 * np.pi * f0 / sr * np.arange(n), amps)


def _inharmonic(rng, n, sr):
    """Struck bar / bell: partials at non-integer ratios of f0, each decaying at its own rate."""
    f0 = _loguniform(rng, 150, 1500)
    k = int(rng.integers(4, 8))
    freqs = np.minimum(f0 * rng.uniform(1.0, 7.5, size=k), 0.45 * sr)
    imp = np.zeros(n)
    imp[0] = 1.0
    return _resonators(imp, sr, freqs, rng.uniform(0.15, 1.5, size=k), rng.uniform(0.3, 1.0, size=k))


def _chirp(rng, n, sr, up: bool):
    t = np.arange(n) / sr
    f_lo = _loguniform(rng, 100, 1000)
    f_hi = min(f_lo * _loguniform(rng, 2.5, 8.0), 0.2 * sr)
    f_a, f_b = (f_lo, f_hi) if up else (f_hi, f_lo)
    rate = math.log(f_b / f_a) / (n / sr)  # exponential sweep f(t) = f_a exp(rate t)
    amps = np.array([1.0, 0.5, 0.25])[: int(rng.integers(1, 4))]
    return _partials(rng, 2 * np.pi * f_a * np.expm1(rate * t) / rate, amps)


def _pink(rng, n, sr):
    return _colored_noise(rng, n, sr, 1.0)


def _brown(rng, n, sr):
    return _colored_noise(rng, n, sr, 2.0)


def _bandpass(rng, n, sr):
    from scipy.fft import next_fast_len

    fc = _loguniform(rng, 300, 6000)
    half = rng.uniform(1.15, 1.5)
    m = next_fast_len(n, real=True)  # an event length can be a large prime: FFT at a fast size, then crop
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / sr)
    spec *= (f >= fc / half) & (f <= fc * half)
    return np.fft.irfft(spec, m)[:n]


def _clicks(rng, n, sr):
    period = sr / rng.uniform(4, 40)
    times = np.arange(rng.uniform(0, period), n, period)
    times += rng.normal(0, 0.01 * period, size=times.shape)  # slight timing jitter
    imp = np.zeros(n)
    idx = np.clip(times.astype(np.int64), 0, n - 1)
    imp[idx] = rng.uniform(0.8, 1.0, size=idx.shape)
    return _resonators(imp, sr, [_loguniform(rng, 1000, 6000)], [rng.uniform(0.001, 0.004)])


def _am_tone(rng, n, sr):
    t = np.arange(n) / sr
    fc = _loguniform(rng, 200, 3000)
    fm, depth = rng.uniform(3, 30), rng.uniform(0.7, 1.0)
    amps = np.array([1.0, 0.3])[: int(rng.integers(1, 3))]
    return (1 + depth * np.sin(2 * np.pi * fm * t)) * _partials(rng, 2 * np.pi * fc * t, amps)


def _fm_tone(rng, n, sr):
    t = np.arange(n) / sr
    fc = _loguniform(rng, 200, 3000)
    rate, dev = (
        rng.uniform(3, 12),
        rng.uniform(0.03, 0.15) * fc,
    )  # vibrato rate (Hz), frequency deviation (Hz)
    amps = np.array([1.0, 0.3])[: int(rng.integers(1, 3))]
    return _partials(rng, 2 * np.pi * fc * t - dev / rate * np.cos(2 * np.pi * rate * t), amps)


def _rain(rng, n, sr):
    """Irregular (Poisson) drops, each a short exponentially decaying burst of high-tilted noise."""
    from scipy.signal import lfilter

    k = rng.poisson(rng.uniform(150, 800) * n / sr)
    amp = np.zeros(n)
    np.add.at(amp, rng.integers(0, n, size=k), rng.lognormal(0.0, 0.7, size=k))
    env = lfilter([1.0], [1.0, -math.exp(-1.0 / (rng.uniform(0.0005, 0.003) * sr))], amp)
    noise = rng.standard_normal(n)
    noise[1:] -= 0.9 * noise[:-1]  # tilt towards high frequencies
    return env * noise


_CLASSES: list[tuple[str, Callable]] = [
    ("harmonic_tone", _harmonic),
    ("inharmonic_tone", _inharmonic),
    ("chirp_up", lambda rng, n, sr: _chirp(rng, n, sr, True)),
    ("chirp_down", lambda rng, n, sr: _chirp(rng, n, sr, False)),
    ("pink_noise", _pink),
    ("brown_noise", _brown),
    ("bandpass_noise", _bandpass),
    ("click_train", _clicks),
    ("am_tone", _am_tone),
    ("fm_tone", _fm_tone),
    ("rain", _rain),
]


def _fade(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack > 0:
        env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release > 0:
        env[n - release :] = 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 1) / release)
    return env


class SyntheticSounds(AudioDataset):
    """``num_clips`` procedural clips of ``len(CLASS_NAMES)`` classes (see module doc), single-label.

    ``labeled=False`` gives label -1 for every clip (pre-training). ``train`` does not change the content (clips
    are generated at ``clip_samples`` directly; a clip is the same in every epoch). ``path`` is ``""``.
    """

    CLASS_NAMES = [name for name, _ in _CLASSES]
    multilabel = False

    def __init__(
        self,
        num_clips: int,
        seed: int = 0,
        clip_seconds: float = 2.56,
        labeled: bool = True,
        sample_rate: int = SAMPLE_RATE,
        train: bool = False,
        on_error: str = "raise",
    ):
        super().__init__(
            clip_seconds=clip_seconds, sample_rate=sample_rate, train=train, seed=seed, on_error=on_error
        )
        if num_clips <= 0:
            raise ValueError(f"num_clips must be positive, got {num_clips}")
        self.num_clips = int(num_clips)
        self.labeled = bool(labeled)
        self.class_names = list(self.CLASS_NAMES)

    def __len__(self) -> int:
        return self.num_clips

    def class_of(self, index: int) -> int:
        """The class of clip ``index`` (even when ``labeled=False``): a seeded permutation of the classes per block
        of ``num_classes`` indices, so every full block holds each class exactly once."""
        c = self.num_classes
        perm = np.random.default_rng([self.seed, index // c, 0x5EED]).permutation(c)
        return int(perm[index % c])

    def _label(self, index: int) -> int:
        return self.class_of(index) if self.labeled else -1

    def render(self, index: int) -> np.ndarray:
        """Clip ``index`` as a float64 numpy array ``(clip_samples,)`` (deterministic in ``(seed, index)``)."""
        from scipy.signal import lfilter

        n, sr = self.clip_samples, self.sample_rate
        rng = np.random.default_rng([self.seed, int(index)])
        dur = max(int(rng.uniform(0.25, 0.9) * n), 16)
        onset = int(rng.integers(0, n - dur + 1))
        event = _CLASSES[self.class_of(index)][1](rng, dur, sr)
        event = event * _fade(dur, int(rng.uniform(0.005, 0.05) * sr), int(rng.uniform(0.01, 0.2) * sr))
        event *= 10 ** (rng.uniform(-35, -12) / 20) / (np.sqrt(np.mean(event**2)) + 1e-12)
        white = rng.standard_normal(n)
        pink = lfilter(*_pink_filter(sr), white)
        mix = rng.uniform()  # white / pink mix; the pink part is normalized to unit RMS like the white one
        bg = mix * white + (1 - mix) * pink / (np.sqrt(np.mean(pink**2)) + 1e-12)
        bg *= 10 ** (rng.uniform(-65, -45) / 20) / (np.sqrt(np.mean(bg**2)) + 1e-12)
        bg[onset : onset + dur] += event
        return bg

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        return torch.from_numpy(self.render(index).astype(np.float32)), ""

    def write_folder(
        self, root: str | os.PathLike, n_per_class: int, layout: str = "esc50", format: str = "wav"
    ) -> list[tuple[str, int]]:
        """Write ``n_per_class`` clips of every class (indices ``0 .. n_per_class * C - 1`` of this set) as files.

        layout:
          * ``"esc50"``: ``root/audio/{fold}-{index}-A-{target}.wav`` + ``root/meta/esc50.csv`` with columns
            ``filename,fold,target,category,esc10,src_file,take``; folds 1..5 assigned round-robin within each
            class (balanced);
          * ``"class_folders"``: ``root/{class_name}/{class_name}_{k:04d}.{format}``;
          * ``"flat"``: ``root/clip_{index:06d}.{format}`` (no labels in the layout).
        ``format``: wav (32-bit float, exact), flac / ogg / mp3 (clipped to [-1, 1]). Returns ``[(path, label)]``.
        """
        import soundfile as sf

        subtypes = {"wav": "FLOAT", "flac": "PCM_24", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}
        if format not in subtypes:
            raise ValueError(f"format must be one of {sorted(subtypes)}, got {format!r}")
        if layout not in ("esc50", "class_folders", "flat"):
            raise ValueError(f"layout must be 'esc50', 'class_folders' or 'flat', got {layout!r}")
        c = self.num_classes
        total = n_per_class * c
        if total > len(self):
            raise ValueError(f"need {total} clips ({n_per_class} x {c} classes) but the set has {len(self)}")
        root = Path(root)
        written: list[tuple[str, int]] = []
        rows = []
        seen = [0] * c
        for index in range(total):
            label = self.class_of(index)
            k = seen[label]
            seen[label] += 1
            name = self.class_names[label]
            if layout == "esc50":
                fold = k % 5 + 1
                path = root / "audio" / f"{fold}-{index:06d}-A-{label}.{format}"
                rows.append([path.name, fold, label, name, False, f"{index:06d}", "A"])
            elif layout == "class_folders":
                path = root / name / f"{name}_{k:04d}.{format}"
            else:
                path = root / f"clip_{index:06d}.{format}"
            path.parent.mkdir(parents=True, exist_ok=True)
            x = self.render(index)
            if format != "wav":
                x = np.clip(x, -1.0, 1.0)
            sf.write(str(path), x.astype(np.float32), self.sample_rate, subtype=subtypes[format])
            written.append((str(path), label))
        if layout == "esc50":
            (root / "meta").mkdir(parents=True, exist_ok=True)
            with open(root / "meta" / "esc50.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
                w.writerows(rows)
        return written


__all__ = ["SyntheticSounds"]
