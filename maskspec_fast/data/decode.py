"""Decode audio held in memory (an HDF5 entry, a tar member, a parquet cell) to a ``(N,)`` float32 mono waveform.

``decode_bytes(data, name)`` follows :func:`~maskspec_fast.frontend.audio.load_audio` exactly (down-mix by the mean
over channels, polyphase resampling to ``sample_rate``, the same checks) but reads from a buffer, and every failure
is an :class:`~maskspec_fast.frontend.audio.AudioFileError` whose ``path`` is ``name`` (callers pass
``"<file>:<entry>"`` so the message names both the container and the entry).

Why a fast path for 16-bit PCM WAV: prepared shards (``python -m maskspec_fast.data prepare``) hold canonical
``RIFF/WAVE`` PCM16 members; their samples are read with ``np.frombuffer`` (``x = int16 / 32768``, the value
libsndfile returns for PCM16 read as float32), skipping the decoder. Any other content goes to the decoder the
registry picks from it (:mod:`maskspec_fast.frontend.decoders`: libsndfile, or FFmpeg for mp4/m4a/webm/opus...).
"""
from __future__ import annotations

import io
import struct

import numpy as np
import torch

from ..frontend.audio import SAMPLE_RATE, AudioFileError, decode_source, decode_window


def parse_pcm16_wav(data: bytes | memoryview) -> tuple[np.ndarray, int] | None:
    """``(samples (frames, channels) int16, rate)`` of a PCM16 ``RIFF/WAVE`` buffer, or None for anything else
    (other sample formats, WAVE_FORMAT_EXTENSIBLE, RF64, malformed chunks: the caller then uses libsndfile)."""
    view = memoryview(data)
    if len(view) < 12 or bytes(view[0:4]) != b"RIFF" or bytes(view[8:12]) != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(view):
        cid, size = bytes(view[pos : pos + 4]), struct.unpack_from("<I", view, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > len(view):
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", view, body)
            if tag != 1 or bits != 16 or channels < 1 or align != 2 * channels:
                return None
            fmt = (channels, rate)
        elif cid == b"data":
            if fmt is None:
                return None
            end = min(body + size, len(view))  # a truncated data chunk: libsndfile also reads what is there
            channels, rate = fmt
            frames = (end - body) // (2 * channels)
            pcm = np.frombuffer(view[body : body + frames * 2 * channels], dtype="<i2")
            return pcm.reshape(frames, channels), rate
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None


def decode_bytes(
    data: bytes | memoryview | np.ndarray,
    name: str,
    sample_rate: int = SAMPLE_RATE,
    min_samples: int | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode the bytes of an audio file (any the registry reads: wav, flac, mp3, m4a, mp4, webm, opus...) to ``(N,)`` float32 mono at ``sample_rate`` Hz.

    ``N = ceil(frames * sample_rate / file_rate)``. Raises :class:`AudioFileError` ``(name, problem)`` for empty
    data, undecodable data, 0 samples, NaN/Inf samples, a rate or length outside the decode budget, and fewer
    than ``min_samples`` samples when given. ``max_samples`` / ``generator``: only a window (as
    :func:`~maskspec_fast.frontend.audio.decode_window`).
    """
    if isinstance(data, np.ndarray):
        data = data.tobytes() if data.dtype != np.uint8 or not data.flags.c_contiguous else memoryview(data)
    if data is None or len(data) == 0:
        raise AudioFileError(name, "empty entry (0 bytes)")
    parsed = parse_pcm16_wav(data)
    if parsed is not None:
        pcm, sr = parsed

        def read(a: int, b: int) -> np.ndarray:
            part = pcm[a:b]
            mono = part[:, 0].astype(np.float32) if pcm.shape[1] == 1 else part.astype(np.float32).mean(axis=1)
            mono *= np.float32(1.0 / 32768.0)
            return mono

        return decode_window(read, pcm.shape[0], int(sr), name, sample_rate, min_samples, max_samples, generator)
    return decode_source(io.BytesIO(bytes(data)), name, sample_rate, min_samples, max_samples, generator)


def clip_window(ds, index: int) -> dict:
    """The decode window of clip ``index`` of data set ``ds``: ``max_samples`` (its clip length) and, when it
    crops at random, the generator of that crop; ``{}`` (the whole file) for ``ds.whole_clips`` (``prepare``)."""
    if ds.whole_clips:
        return {}
    return {"max_samples": ds.clip_samples, "generator": ds._generator(index) if ds.train else None}


def encode_pcm16_wav(wave: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """``(N,)`` float mono -> the bytes of a canonical 44-byte-header PCM16 WAV (clipped to [-1, 1), rounded)."""
    x = np.asarray(wave, dtype=np.float32).reshape(-1)
    pcm = np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1,
                         int(sample_rate), int(sample_rate) * 2, 2, 16, b"data", len(pcm))
    return header + pcm


__all__ = ["clip_window", "decode_bytes", "encode_pcm16_wav", "parse_pcm16_wav"]
