"""FFmpeg decoding through PyAV (its wheels carry FFmpeg: no system package): every container and codec FFmpeg
reads (mp4/m4a/m4v/mov, mkv/webm, ogg/opus, aac, aiff, wma, ...), the first audio stream of a file (a video's
sound track), down-mixed and resampled by the same rule as libsndfile's files (:func:`~.audio.decode_window`).

``open_stream(source, path)`` -> the stream's ``read(a, b)`` (frames ``[a, b)`` at the file's rate, mono) and
``decode_all()``, which :func:`~.audio.ffmpeg_decode` drives like libsndfile's reader; ``source`` is a file path
or a binary file object (bytes of an HDF5 / tar / parquet entry).

Sample 0 is the first sample FFmpeg outputs when it decodes the stream from its start, i.e. after the encoder's
priming (AAC: the edit list / iTunSMPB delay; Opus: the pre-skip of the header / Matroska CodecDelay), which FFmpeg
drops on the first packet. A window ``[a, b)`` (a training clip) is decoded by seeking, then aligning by each
frame's timestamp, not by counting samples from the seek point, because FFmpeg drops the priming again on the first
packet after a seek (seen with Opus in Ogg and WebM). Decoding starts ``PREROLL_SECONDS`` before ``a`` so that the
codec's overlap state (AAC's MDCT overlap, Opus' 80 ms convergence) is warm by the first kept sample.

Containers whose timestamps are coarser than a sample (Matroska / WebM: 1 ms) cannot place a seek to the sample:
windows starting in the first ``COARSE_SEEK_SECONDS`` are decoded from the start of the file (exact; every
AudioSet and VGGSound clip is 10 s); later ones seek and align by the millisecond timestamp, snapped to the frame
grid for Opus (its frames are ``k * F - pre_skip`` samples in, F constant), so only other codecs in Matroska keep an
error of up to half a millisecond there. The whole-file decode and the window agree to the codec's own tolerance,
measured in ``tests/test_ffmpeg.py``.
"""
from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np

from .errors import AudioFileError

PREROLL_SECONDS = 0.1  # decoded before a window and dropped: > AAC's 2048-sample overlap and Opus' 80 ms
COARSE_SEEK_SECONDS = 30.0  # with ms timestamps (Matroska), windows starting earlier are decoded from the start
INSTALL_HINT = "pip install 'maskspec_fast[av]' (PyAV, which carries FFmpeg)"

_SCALE = {"s16": 1 / 32768.0, "s32": 1 / 2147483648.0, "u8": 1 / 128.0}


def _av():
    try:
        import av
    except ImportError:
        return None
    return av


def _layout(frame) -> tuple[str, bool, int]:
    """``(sample format, planar, channels)`` of a decoded ``av.AudioFrame``: frames alike convert together."""
    return frame.format.name, frame.format.is_planar, frame.layout.nb_channels


def _to_mono(arrays: list[np.ndarray], layout: tuple[str, bool, int]) -> np.ndarray:
    """``(samples,)`` float32 mean over channels of consecutive frames' ``to_ndarray()`` outputs of one layout.

    Converted in one go: per-frame conversion (a numpy mean of a (2, 1024) array costs ~17 us, as much as the AAC
    decode of the frame) halved the decode speed."""
    name, planar, channels = layout
    x = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)
    if not planar:  # packed: (1, samples * channels) interleaved
        x = x.reshape(-1, channels).T
    fmt = name.rstrip("p")
    if fmt == "u8":
        x = x.astype(np.float32) - 128.0
    x = x.astype(np.float32, copy=False)
    if fmt in _SCALE:
        x = x * np.float32(_SCALE[fmt])
    return x.mean(axis=0) if x.shape[0] > 1 else x[0]


class _Run:
    """Consecutive decoded frames gathered for one conversion: ``add(frame)``, then ``mono()``."""

    def __init__(self):
        self.parts: list[np.ndarray] = []  # mono pieces of layouts already closed
        self.arrays: list[np.ndarray] = []
        self.layout: tuple[str, bool, int] | None = None
        self.samples = 0

    def add(self, frame) -> None:
        lay = _layout(frame)
        if lay != self.layout and self.arrays:  # the stream changed format or channels: close the run so far
            self.parts.append(_to_mono(self.arrays, self.layout))
            self.arrays = []
        self.layout = lay
        self.arrays.append(frame.to_ndarray())
        self.samples += frame.samples

    def mono(self) -> np.ndarray:
        if self.arrays:
            self.parts.append(_to_mono(self.arrays, self.layout))
            self.arrays = []
        if not self.parts:
            return np.zeros(0, np.float32)
        return self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)


def _mono(frame) -> np.ndarray:
    """``(samples,)`` float32 mono of one decoded frame."""
    return _to_mono([frame.to_ndarray()], _layout(frame))


class _Stream:
    """The first audio stream of an opened container, its declared length and its window reader."""

    def __init__(self, source: str | BinaryIO, path: str | os.PathLike):
        av = _av()
        if av is None:
            raise AudioFileError(path, f"decoding this container needs FFmpeg: {INSTALL_HINT}")
        self.av, self.path, self.source = av, path, source
        self.container = self._open()
        audio = [s for s in self.container.streams if s.type == "audio"]
        if not audio:
            kinds = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                              for s in self.container.streams) or "none"
            self.container.close()
            raise AudioFileError(path, f"no audio stream in the container (streams: {kinds})")
        self.stream = audio[0]
        cc = self.stream.codec_context
        if cc is None or not cc.name or cc.name == "none":
            self.container.close()
            raise AudioFileError(path, f"unknown audio codec in the {self.container.format.name} container: FFmpeg "
                                       "has no decoder for it")
        self.codec = cc.name
        self.rate = int(cc.sample_rate or self.stream.rate or 0)
        tb = self.stream.time_base
        self.tb = float(tb) if tb else 0.0

    def _open(self):
        src = self.source
        if not isinstance(src, (str, os.PathLike)):
            src.seek(0)
        try:
            return self.av.open(src if not isinstance(src, os.PathLike) else os.fspath(src), "r")
        except self.av.error.FFmpegError as e:
            raise AudioFileError(self.path, self._open_problem(e)) from e

    def _open_problem(self, e: Exception) -> str:
        head = self._head(64 * 1024 * 1024)
        if head[4:8] == b"ftyp" and b"moov" not in head:
            return ("truncated mp4/mov: no moov atom (the index FFmpeg needs; a cut or still-downloading file?) "
                    f"({type(e).__name__})")
        return f"corrupt or undecodable container ({type(e).__name__}: {e})"

    def _head(self, n: int) -> bytes:
        src = self.source
        try:
            if isinstance(src, (str, os.PathLike)):
                with open(src, "rb") as f:
                    return f.read(n)
            src.seek(0)
            return src.read(n)
        except OSError:
            return b""

    def close(self) -> None:
        self.container.close()

    def declared_frames(self) -> int:
        """Frames at ``self.rate`` the container declares (stream duration, else the container's): the length a
        window is drawn from. A few hundred frames off is possible (Ogg counts the pre-skip, WebM has ms)."""
        st = self.stream
        if st.duration and self.tb:
            return int(round(st.duration * self.tb * self.rate))
        if self.container.duration:
            return int(round(self.container.duration / 1e6 * self.rate))
        return 0

    def _frames(self):
        try:
            yield from self.container.decode(self.stream)
        except self.av.error.FFmpegError as e:
            raise AudioFileError(self.path, f"corrupt or undecodable {self.codec} audio "
                                            f"({type(e).__name__}: {e})") from e

    def decode_all(self) -> np.ndarray:
        """The whole stream, ``(frames,)`` float32 mono at ``self.rate``."""
        run = _Run()
        for f in self._frames():
            run.add(f)
        return run.mono()

    def _position(self, frame, origin: int, snap: bool) -> int:
        """Sample index (from sample 0 of a decode from the start) of ``frame``'s first sample."""
        pos = int(round(frame.pts * float(frame.time_base) * self.rate)) - origin
        if snap:  # Opus frames start at k * F - pre_skip; a ms timestamp is within F / 2 of the right one
            delay, size = int(self.stream.codec_context.delay or 0), frame.samples
            pos = int(round((pos + delay) / size)) * size - delay
        return pos

    def read(self, a: int, b: int) -> np.ndarray:
        """Frames ``[a, b)`` of the whole decode (fewer at the end of the stream), ``(n,)`` float32 mono."""
        coarse = self.tb * self.rate > 1.0 + 1e-9
        start = a - int(PREROLL_SECONDS * self.rate)
        if start <= 0 or (coarse and a < COARSE_SEEK_SECONDS * self.rate):
            whole = self._read_from_start(b)
            return whole[a:b]
        origin = self._origin()
        st = self.stream
        target = int((start + origin) / self.rate / self.tb)
        try:
            self.container.seek(target, stream=st, backward=True, any_frame=False)
        except self.av.error.FFmpegError as e:
            raise AudioFileError(self.path, f"cannot seek in the container ({type(e).__name__}: {e})") from e
        first, first_pos, run, pos, seen = None, 0, _Run(), None, 0
        snap = coarse and self.codec == "opus"
        for frame in self._frames():
            if frame.pts is None:
                continue
            seen += 1
            if seen == 1:  # after a seek the first frame may be cut (the priming dropped again): placed alone,
                first, first_pos = _mono(frame), self._position(frame, origin, snap)
                continue
            if seen == 2:  # and its successor sets the grid the rest follow by counting samples
                pos = self._position(frame, origin, snap)
            if run.samples or pos + frame.samples > a:
                run.add(frame)
            else:
                pos += frame.samples  # pre-roll wholly before the window: decoded (it warms the codec), not kept
            if pos + run.samples >= b:
                break
        out = np.zeros(max(0, b - a), np.float32)
        filled = 0
        for x, at in ((first, first_pos), (run.mono(), pos)):
            if x is None or at is None:
                continue
            lo, hi = max(at, a), min(at + len(x), b)
            if hi > lo:
                out[lo - a : hi - a] = x[lo - at : hi - at]
                filled = max(filled, hi - a)
        return out[:filled]

    def _read_from_start(self, b: int) -> np.ndarray:
        run = _Run()
        for frame in self._frames():
            run.add(frame)
            if run.samples >= b:
                break
        return run.mono()

    def _origin(self) -> int:
        """The timestamp (in samples) of sample 0: that of the first frame a decode from the start gives."""
        first = next(iter(self._frames()), None)
        if first is None or first.pts is None:
            st = self.stream.start_time
            return int(round((st or 0) * self.tb * self.rate))
        origin = int(round(first.pts * float(first.time_base) * self.rate))
        self.container.close()  # a fresh demuxer and decoder for the seek
        self.container = self._open()
        self.stream = [s for s in self.container.streams if s.type == "audio"][0]
        return origin


def open_stream(source: str | os.PathLike | BinaryIO, path: str | os.PathLike) -> _Stream:
    """The first audio stream of ``source`` (a path or a binary file object; ``path`` names it in errors), ready
    to ``read(a, b)`` a window or ``decode_all()``; raises :class:`AudioFileError` (a missing PyAV, an unreadable
    or truncated container, no audio stream, an unknown codec). ``load_audio`` drives it
    (:func:`~.audio.ffmpeg_decode`)."""
    return _Stream(source, path)


def available() -> bool:
    """Whether PyAV (and so FFmpeg decoding) is installed."""
    return _av() is not None


__all__ = ["COARSE_SEEK_SECONDS", "PREROLL_SECONDS", "available", "open_stream"]
