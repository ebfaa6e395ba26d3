"""The one anti-aliasing / anti-imaging filter design that every resampler of the package uses (the reference
polyphase resampler in :mod:`maskspec_fast.frontend.audio` and the filters around DALI's resampler).

A Kaiser-windowed sinc:  h[n] = c sinc(c n) kaiser_beta[n] / sum_n(...),  n = -ceil(Z / c) .. ceil(Z / c),
with ``c`` the cutoff in units of the Nyquist frequency of the rate the filter runs at, ``Z`` = 32 zero crossings
on each side and beta = 8.6; the continuous cutoff is ``ROLLOFF * min(orig, new) / 2`` Hz. Normalized to unit DC
gain. Measured accuracy: see :mod:`maskspec_fast.frontend.audio`.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

ROLLOFF = 0.97  # cutoff as a fraction of the lower Nyquist frequency
ZERO_CROSSINGS = 32  # sinc zero crossings on each side
KAISER_BETA = 8.6


@lru_cache(maxsize=64)
def windowed_sinc(cutoff: float) -> np.ndarray:
    """Odd-length, zero-phase low-pass FIR ``(K,)`` float64 with cutoff ``cutoff`` (fraction of Nyquist, 0 < c <= 1)."""
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff must be in (0, 1] (a fraction of the Nyquist frequency), got {cutoff}")
    half = int(math.ceil(ZERO_CROSSINGS / cutoff))
    n = np.arange(-half, half + 1, dtype=np.float64)
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, KAISER_BETA)
    return h / h.sum()  # exact unit DC gain


def resampling_cutoff(orig_sr: int, new_sr: int, rate: int) -> float:
    """The cutoff of the ``orig_sr -> new_sr`` filter for a filter running at ``rate`` Hz (fraction of its Nyquist)."""
    return ROLLOFF * min(orig_sr, new_sr) / rate




def polyphase_lowpass(up: int, down: int) -> np.ndarray:
    """The FIR of a polyphase ``up/down`` resampler (``up``, ``down`` coprime); it runs at ``orig * up`` Hz, so its
    cutoff is ``ROLLOFF * min(orig, new) / (orig * up) = ROLLOFF / max(up, down)`` of that rate's Nyquist."""
    return windowed_sinc(resampling_cutoff(down, up, up * down))  # rate orig*up <-> up*down


__all__ = ["KAISER_BETA", "ROLLOFF", "ZERO_CROSSINGS", "polyphase_lowpass", "resampling_cutoff", "windowed_sinc"]
