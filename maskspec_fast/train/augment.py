"""Fine-tuning augmentations on the log-mel batch: SpecAugment masks and mixup (the PaSST / MaskSpec recipe), time
roll, and a random level / spectral-tilt change (recordings of other gain and other microphones).

Randomness is drawn separately from its use (``draw_*`` take a ``torch.Generator``; ``apply_*`` are pure), so the
training loop can draw the parameters for the whole global batch from a generator seeded by ``(seed, step)``
and every rank keeps its rows: the result then does not depend on the number of processes, and a resumed run
draws the same masks as an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..frontend.logmel import MelSettings

# docs/MASKSPEC.md (fine-tuning recipe): time masks up to 192 frames for 10-s clips (1000 frames); shorter clips get proportionally shorter ones.
REFERENCE_FRAMES = 1000


def scaled_time_mask(max_frames_at_10s: int, frames: int) -> int:
    """The time-mask limit for clips of ``frames`` frames: ``round(max * frames / 1000)`` (192 -> 49 at 256)."""
    return int(round(max_frames_at_10s * frames / REFERENCE_FRAMES))


@dataclass
class MaskParams:
    """One frequency band and one time span per clip: rows ``[f_start, f_start + f_width)`` and columns
    ``[t_start, t_start + t_width)`` are set to ``value``; each field is ``(B,)`` int64 (width 0: no mask)."""

    f_start: torch.Tensor
    f_width: torch.Tensor
    t_start: torch.Tensor
    t_width: torch.Tensor

    def rows(self, index: torch.Tensor) -> MaskParams:
        return MaskParams(self.f_start[index], self.f_width[index], self.t_start[index], self.t_width[index])


def _uniform_int(gen: torch.Generator, n: int, high: torch.Tensor | int) -> torch.Tensor:
    """``(n,)`` int64 uniform on ``{0, ..., high}`` (``high`` scalar or ``(n,)``, >= 0)."""
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    high = torch.as_tensor(high, dtype=torch.float64)
    return torch.minimum(torch.floor(u * (high + 1)), high).long()


def draw_spec_augment(gen: torch.Generator, n: int, n_mels: int, frames: int, max_freq: int, max_time: int) -> MaskParams:
    """Widths ``~ U{0..max}`` (capped at the axis size) and starts ``~ U{0..size - width}`` for ``n`` clips, as
    torchaudio's ``FrequencyMasking`` / ``TimeMasking`` with ``iid_masks=True`` draw them."""
    fw = _uniform_int(gen, n, min(max_freq, n_mels))
    fs = _uniform_int(gen, n, n_mels - fw)
    tw = _uniform_int(gen, n, min(max_time, frames))
    ts = _uniform_int(gen, n, frames - tw)
    return MaskParams(fs, fw, ts, tw)


def apply_spec_augment(spec: torch.Tensor, p: MaskParams, value: float = 0.0) -> torch.Tensor:
    """Masked copy of ``spec`` ``(B, F, T)``: ``out[b, f, t] = value`` where f is in clip b's band or t in its span.

    The mask is ``M[b, f, t] = (f_start <= f < f_start + f_width) | (t_start <= t < t_start + t_width)``, built
    by broadcasting (no Python loop over clips).
    """
    b, f, t = spec.shape
    dev = spec.device
    fi = torch.arange(f, device=dev).unsqueeze(0)  # (1, F)
    ti = torch.arange(t, device=dev).unsqueeze(0)  # (1, T)
    fs, fw = p.f_start.to(dev).unsqueeze(1), p.f_width.to(dev).unsqueeze(1)  # (B, 1)
    ts, tw = p.t_start.to(dev).unsqueeze(1), p.t_width.to(dev).unsqueeze(1)
    fmask = (fi >= fs) & (fi < fs + fw)  # (B, F)
    tmask = (ti >= ts) & (ti < ts + tw)  # (B, T)
    mask = fmask.unsqueeze(2) | tmask.unsqueeze(1)  # (B, F, T)
    return spec.masked_fill(mask, value)


def spec_augment_reference(spec: torch.Tensor, p: MaskParams, value: float = 0.0) -> torch.Tensor:
    """Loop version of :func:`apply_spec_augment` (the oracle the tests compare against)."""
    out = spec.clone()
    for b in range(spec.shape[0]):
        fs, fw, ts, tw = (int(x[b]) for x in (p.f_start, p.f_width, p.t_start, p.t_width))
        out[b, fs : fs + fw, :] = value
        out[b, :, ts : ts + tw] = value
    return out


def draw_time_roll(gen: torch.Generator, n: int, frames: int) -> torch.Tensor:
    """``(n,)`` int64 circular time shifts, uniform on ``{0, ..., frames - 1}``."""
    return torch.randint(0, frames, (n,), generator=gen)


def apply_time_roll(spec: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular shift of clip b of ``spec (B, F, T)`` by ``shifts[b]`` frames along time:
    ``out[b, :, t] = spec[b, :, (t - shifts[b]) mod T]`` (``torch.roll`` per clip, one gather for the batch)."""
    t = spec.shape[-1]
    idx = (torch.arange(t, device=spec.device).unsqueeze(0) - shifts.to(spec.device).unsqueeze(1)) % t  # (B, T)
    return torch.gather(spec, 2, idx.unsqueeze(1).expand(-1, spec.shape[1], -1))


def draw_gain(gen: torch.Generator, n: int, gain_db: float, tilt_db: float) -> torch.Tensor:
    """``(n, 2)`` float32 per-clip (gain, tilt) in dB, each uniform on ``[-limit, limit]`` (0 where the limit is 0)."""
    u = torch.rand(n, 2, generator=gen) * 2 - 1
    return u * torch.tensor([float(gain_db), float(tilt_db)])


def apply_gain(spec: torch.Tensor, gain: torch.Tensor, mel: MelSettings | None = None) -> torch.Tensor:
    """Level and spectral-tilt change, exact in the power domain of the log-mel front end
    ``x = (log(m + eps) + shift) / scale`` (the constants of ``mel``, default :class:`MelSettings()`):

    ``m' = m * 10 ** (g_b(f) / 10)`` with ``g_b(f) = gain_b + tilt_b * (f / (F - 1) - 1/2)`` dB per mel bin ``f``,
    i.e. a louder or quieter recording through a brighter or darker microphone; the ``eps`` floor stays a floor.
    spec ``(B, F, T)``, gain ``(B, 2)`` (dB, from :func:`draw_gain`) -> ``(B, F, T)``.
    """
    f = spec.shape[1]
    ramp = torch.linspace(-0.5, 0.5, f, device=spec.device, dtype=torch.float32)  # (F,)
    g = gain.to(spec.device, torch.float32)
    db = g[:, :1] + g[:, 1:] * ramp  # (B, F)
    factor = torch.pow(10.0, db / 10.0).to(spec.dtype).unsqueeze(-1)  # (B, F, 1)
    m = mel or MelSettings()
    power = torch.exp(spec * m.scale - m.shift) - m.log_offset
    return (torch.log(power.clamp_min(0) * factor + m.log_offset) + m.shift) / m.scale


def draw_mixup_lambda(gen: torch.Generator, n: int, alpha: float) -> torch.Tensor:
    """``(n,)`` float32 ``lam = max(u, 1 - u)`` with ``u ~ Beta(alpha, alpha)`` per clip (PaSST's mixup: the
    clip's own content always dominates). Beta is sampled from the seeded generator through numpy."""
    if alpha <= 0:
        return torch.ones(n)
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    u = np.random.default_rng(seed).beta(alpha, alpha, size=n)
    return torch.from_numpy(np.maximum(u, 1.0 - u)).float()


def soft_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` class indices -> one-hot ``(B, C)`` float; ``(B, C)`` (multi-hot or already soft) -> float."""
    if labels.dim() == 1:
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    return labels.float()


def apply_mixup(spec: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix clip b with clip ``B - 1 - b`` (the batch reversed; the batch is already in random order, as timm's
    ``Mixup`` assumes): ``x_b = lam_b x_b + (1 - lam_b) x_{B-1-b}`` and the same for the soft targets ``(B, C)``.

    spec ``(B, F, T)``, targets ``(B, C)``, lam ``(B,)`` -> mixed spec ``(B, F, T)``, targets ``(B, C)``.
    """
    lam = lam.to(device=spec.device, dtype=spec.dtype)
    x = lam.view(-1, 1, 1) * spec + (1 - lam).view(-1, 1, 1) * spec.flip(0)
    lt = lam.to(targets.dtype).view(-1, 1)
    y = lt * targets + (1 - lt) * targets.flip(0)
    return x, y


__all__ = [
    "MaskParams",
    "apply_gain",
    "apply_mixup",
    "apply_spec_augment",
    "apply_time_roll",
    "draw_gain",
    "draw_mixup_lambda",
    "draw_spec_augment",
    "draw_time_roll",
    "scaled_time_mask",
    "soft_targets",
    "spec_augment_reference",
]
