"""Audio decoding, resampling and cropping for the reference (CPU) data path.

``load_audio(path)`` -> ``(N,)`` float32 mono at 32 kHz:
  decode (the registry of frontend/decoders.py picks by content: libsndfile for wav, flac, ogg/vorbis, mp3, aiff;
          FFmpeg through PyAV, frontend/ffmpeg.py, for mp4/m4a/mov, webm/mkv, opus, aac, wma, ...)
                                                                       -> (frames, channels)
  -> down-mix: mean over channels                                      -> (frames,)
  -> resample orig_sr -> 32 kHz (polyphase, see :func:`resample`)      -> (ceil(frames * 32000 / orig_sr),)

Every failure is an :class:`AudioFileError` naming the file and the problem, so a data loader can report or skip
the file (``on_error="skip"`` in :mod:`maskspec_fast.data`) instead of crashing a long run on one bad clip.

Resampling choice: polyphase filtering (``scipy.signal.resample_poly``, up/down = new/orig reduced by their gcd)
with our own low-pass design instead of scipy's default one. Scipy's default (Kaiser beta 5, cutoff at the
Nyquist of the lower rate, 10 zero crossings) lets a 17 kHz tone of a 48 kHz file alias to 15 kHz at only
-14 dB, i.e. into the top mel bins. Our filter: Kaiser beta 8.6, cutoff ``0.97 * min(orig, new) / 2``,
32 zero crossings of the sinc on each side. Measured on pure tones (float64, away from the clip edges):
  * passband error <= 6e-5 absolute on a unit sine (about -84 dB) up to 0.875 x the lower Nyquist
    (e.g. 14 kHz when going 48 k -> 32 k, 7 kHz when going 16 k -> 32 k); 3e-3 at 0.9 x, 3e-2 at 0.92 x;
  * 0.9375 x Nyquist (15 kHz at 32 k) is in the transition band: about -1 dB;
  * aliases of input tones >= 17 kHz (48 k / 44.1 k -> 32 k) are attenuated by >= 90 dB, 16.5 kHz by ~40 dB;
  * cost ~1.3 ms per second of audio on one CPU core.
The output length is ``ceil(N * new / orig)``; the filter is zero-phase (no delay).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .constants import AUDIO_EXTENSIONS, MIN_SAMPLES, SAMPLE_RATE
from .errors import AudioFileError
from .filters import polyphase_lowpass


def _resample_np(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """Polyphase resampling of a float array along its last axis (float64 inside)."""
    from scipy.signal import resample_poly

    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    return resample_poly(np.asarray(x, dtype=np.float64), up, down, axis=-1, window=polyphase_lowpass(up, down))


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``(N,)`` or ``(B, N)`` (any leading dims) from ``orig_sr`` to ``new_sr`` Hz along the last axis.

    Polyphase windowed-sinc filtering (see the module docstring for the filter and its measured accuracy); the
    output has ``ceil(N * new_sr / orig_sr)`` samples, the input's dtype (float32 for integer input) and device.
    Runs on the CPU in float64 (a GPU tensor is copied to the host and back): this is the reference path.
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got orig_sr={orig_sr}, new_sr={new_sr}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if not isinstance(wave, torch.Tensor):
        raise TypeError(f"resample expects a torch.Tensor, got {type(wave).__name__}")
    out_dtype = wave.dtype if wave.is_floating_point() else torch.float32
    if orig_sr == new_sr:
        return wave.to(out_dtype)
    if wave.shape[-1] == 0:
        return wave.new_zeros(wave.shape, dtype=out_dtype)
    y = _resample_np(wave.detach().cpu().double().numpy(), orig_sr, new_sr)
    return torch.from_numpy(y).to(device=wave.device, dtype=out_dtype)


def crop_or_pad(
    wave: torch.Tensor, num_samples: int, random: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Crop or zero-pad the last axis of ``wave`` (``(N,)`` or ``(..., N)``) to ``num_samples``.

    Longer clips: a uniformly random window ``[s, s + num_samples)``, ``s ~ U{0 .. N - num_samples}`` drawn from
    ``generator`` when ``random`` (training), else the start ``[0, num_samples)`` (evaluation, deterministic).
    Shorter clips: zeros appended at the end (the same in both modes).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    n = wave.shape[-1]
    if n == num_samples:
        return wave
    if n < num_samples:
        return torch.nn.functional.pad(wave, (0, num_samples - n))
    start = 0
    if random:
        start = int(torch.randint(0, n - num_samples + 1, (), generator=generator).item())
    return wave[..., start : start + num_samples]


# The decode budget (one rule for every input path: files, HDF5 / tar / parquet bytes): what a file may declare
# before a byte of it is resampled. Rates: 1 kHz (below, no audio event survives; a 1 Hz header turned 4 KB into
# half an hour of samples) to 384 kHz (the highest rate of common studio formats). Length: a whole-file decode
# (embedding a file, preparing shards) stops at MAX_SECONDS; a training or evaluation clip reads only the frames of
# its window (plus the resampler's reach), so its cost follows the clip length, not the length the file declares.
MIN_RATE = 1_000
MAX_RATE = 384_000
MAX_SECONDS = 4 * 3600


def check_rate(path: str | os.PathLike, rate: int) -> None:
    """AudioFileError unless ``MIN_RATE <= rate <= MAX_RATE`` (the decode budget above)."""
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioFileError(path, f"sample rate {rate} Hz is outside the accepted {MIN_RATE}..{MAX_RATE} Hz "
                                   "(a damaged or hostile header?)")


def input_window(frames: int, orig_sr: int, new_sr: int, start: int, num: int) -> tuple[int, int, int]:
    """``(a, b, skip)``: resampling input frames ``[a, b)`` and keeping ``[skip, skip + num)`` gives output
    samples ``[start, start + num)`` of the whole file's resampling, the same values.

    Why it is the same: ``a`` is a multiple of ``down`` (the polyphase filter's phase at ``a`` is the one the whole
    file has there, output ``a * up / down`` lines up with an input frame), and ``[a, b)`` reaches the filter's
    half-length beyond the window on both sides (or the file's ends), so each kept output sums the same inputs.
    """
    if orig_sr == new_sr:
        return start, min(frames, start + num), 0
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g
    reach = (len(polyphase_lowpass(up, down)) // 2) // up + 2  # input frames the filter spans on each side
    first = start * down // up - reach
    m = max(0, first // down)
    b = min(frames, -(-(start + num) * down // up) + reach)
    return m * down, b, start - m * up


def decode_window(
    read,
    frames: int,
    rate: int,
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    min_samples: int | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The one decode rule behind :func:`load_audio` and ``decode_bytes``: checks the budget, reads only the frames
    needed, down-mixes, resamples.

    ``read(a, b)`` returns input frames ``[a, b)`` as ``(n,)`` float32 mono; ``frames`` and ``rate`` are what the
    header declares. The output is ``N = ceil(frames * sample_rate / rate)`` samples long as a whole; with
    ``max_samples`` only the window ``[s, s + min(max_samples, N - s))`` is produced, ``s = 0``, or with
    ``generator`` the draw :func:`crop_or_pad` makes (``s ~ U{0 .. N - max_samples}``), so a caller's crop equals
    cropping the whole decode.
    """
    check_rate(path, rate)
    if frames <= 0:
        raise AudioFileError(path, "empty audio (0 samples)")
    n_out = -(-frames * sample_rate // rate)
    if min_samples is not None and n_out < min_samples:
        raise AudioFileError(
            path,
            f"too short: {n_out} samples at {sample_rate} Hz after resampling (from {frames} at {rate} Hz), "
            f"need at least {min_samples}",
        )
    if max_samples is None:
        if n_out > MAX_SECONDS * sample_rate:
            raise AudioFileError(path, f"declares {frames / rate / 3600:.2f} h of audio, over the decode budget of "
                                       f"{MAX_SECONDS / 3600:g} h for a whole file")
        start, num = 0, n_out
    else:
        start = 0
        if generator is not None and n_out > max_samples:
            start = int(torch.randint(0, n_out - max_samples + 1, (), generator=generator).item())
        num = min(max_samples, n_out - start)
    a, b, skip = input_window(frames, rate, sample_rate, start, num)
    mono = read(a, b)
    if mono.shape[0] == 0:
        raise AudioFileError(path, "empty audio (0 samples)")
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioFileError(path, f"decoded waveform contains NaN/Inf ({bad} of {mono.shape[0]} samples)")
    if rate != sample_rate:
        mono = _resample_np(mono, int(rate), int(sample_rate)).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono[skip : skip + num], dtype=np.float32))


def soundfile_reader(f, path: str | os.PathLike):
    """``read(a, b)`` for :func:`decode_window` over an open ``soundfile.SoundFile``: seeks to ``a`` (or reads
    and drops the frames before it where the format cannot seek) and reads ``b - a`` frames, down-mixed."""

    def read(a: int, b: int) -> np.ndarray:
        try:
            if a:
                if f.seekable():
                    f.seek(a)
                else:
                    f.read(a, dtype="float32", always_2d=True)
            data = f.read(max(0, b - a), dtype="float32", always_2d=True)  # (frames, channels)
        except Exception as e:  # libsndfile reports every decode failure as LibsndfileError / RuntimeError
            raise AudioFileError(path, f"corrupt or undecodable audio ({type(e).__name__}: {e})") from e
        return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]

    return read


def _not_a_file(p: Path) -> str:
    """Why ``p`` cannot be read as a file, checked without opening it (opening a FIFO would block)."""
    import stat

    try:
        mode = p.stat().st_mode
    except OSError:
        return "file not found" + (" (a dangling link)" if p.is_symlink() else "")
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))
    kind = next((name for test, name in kinds if test(mode)), None)
    return f"not a regular file ({kind})" if kind else "not a regular file"


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    min_samples: int | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode an audio file to a ``(N,)`` float32 mono waveform at ``sample_rate`` Hz.

    Channels are averaged (``x = mean_c x_c``); the file's rate is converted with :func:`resample`.
    Raises :class:`AudioFileError` (message: ``"<path>: <problem>"``) for a missing file, an unsupported extension,
    an empty file (0 bytes or 0 samples), a corrupt / undecodable file, NaN or Inf samples, a sample rate or length
    outside the decode budget (:data:`MIN_RATE` .. :data:`MAX_RATE` Hz, :data:`MAX_SECONDS` for a whole file), and,
    when ``min_samples`` is given, a clip shorter than ``min_samples`` after resampling (use :data:`MIN_SAMPLES`,
    5121 at 32 kHz, for "at least one 16-frame patch"). ``max_samples`` / ``generator``: decode only a window of
    the file (see :func:`decode_window`), what a data set's fixed-length clip needs.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in AUDIO_EXTENSIONS:
        raise AudioFileError(
            p, f"unsupported extension {p.suffix!r} (supported: {', '.join(AUDIO_EXTENSIONS)})"
        )
    if not p.is_file():
        raise AudioFileError(p, _not_a_file(p))
    if p.stat().st_size == 0:
        raise AudioFileError(p, "empty file (0 bytes)")
    return decode_source(str(p), p, sample_rate, min_samples, max_samples, generator)


def ffmpeg_decode(
    source,
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    min_samples: int | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode the first audio stream of ``source`` (a path or a binary file object named ``path`` in errors) with
    FFmpeg (:mod:`.ffmpeg`) to ``(N,)`` float32 mono at ``sample_rate`` Hz, under the rule and checks of
    :func:`decode_window`.

    Whole file (``max_samples`` None): every frame FFmpeg outputs, ``N = ceil(frames * sample_rate / rate)`` for the
    frames decoded. A window: ``N`` follows the length the container declares, and only the frames of the window
    (plus the resampler's reach and a pre-roll) are decoded. Raises :class:`AudioFileError` for a missing PyAV, an
    unreadable or truncated container (an mp4 without its moov atom), no audio stream, an unknown codec, a decode
    error, 0 samples, and the checks of :func:`decode_window`.
    """
    from .ffmpeg import open_stream

    s = open_stream(source, path)
    try:
        check_rate(path, s.rate)
        declared = s.declared_frames()
        if max_samples is None and declared > MAX_SECONDS * s.rate * 1.01:  # said before hours are decoded
            raise AudioFileError(path, f"declares {declared / s.rate / 3600:.2f} h of audio, over the decode budget "
                                       f"of {MAX_SECONDS / 3600:g} h for a whole file")
        frames = declared if max_samples is not None else 0
        if frames <= 0:  # a whole file, or nothing declared (a raw stream): decode it all, then window it
            whole = s.decode_all()
            return decode_window(lambda a, b: whole[a:b], len(whole), s.rate, path, sample_rate, min_samples,
                                 max_samples, generator)
        return decode_window(s.read, frames, s.rate, path, sample_rate, min_samples, max_samples, generator)
    finally:
        s.close()


def decode_source(
    source,
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    min_samples: int | None = None,
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Decode ``source`` (a path, or a seekable binary file object named ``path`` in errors) with the decoder the
    registry picks from its content (:mod:`.decoders`): libsndfile or FFmpeg (:mod:`.ffmpeg`). A file whose
    content libsndfile's formats were recognised in but that libsndfile cannot open goes to FFmpeg (when installed)
    before it is called bad."""
    import soundfile as sf

    from .decoders import FFMPEG, SNDFILE, choose, read_head, sniff

    try:
        head = read_head(source)
    except OSError as e:
        raise AudioFileError(path, f"cannot be read ({e.strerror or e})") from e
    known = sniff(head)
    if (known or choose(head, str(path))) == FFMPEG:
        return ffmpeg_decode(source, path, sample_rate, min_samples, max_samples, generator)
    try:
        f = sf.SoundFile(source)
    except Exception as e:  # libsndfile reports every decode failure as LibsndfileError / RuntimeError
        err = AudioFileError(path, f"corrupt or undecodable audio ({type(e).__name__}: {e})")
        from .ffmpeg import available

        # only a recognised container (e.g. a WAV holding a codec libsndfile lacks): FFmpeg would probe unknown
        # bytes until some format matched and decode noise from a corrupt file
        if known == SNDFILE and available():
            try:
                return ffmpeg_decode(source, path, sample_rate, min_samples, max_samples, generator)
            except AudioFileError:
                pass
        raise err from e
    with f:
        return decode_window(soundfile_reader(f, path), f.frames, f.samplerate, path, sample_rate, min_samples,
                             max_samples, generator)


__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioFileError",
    "MAX_RATE",
    "MAX_SECONDS",
    "MIN_RATE",
    "MIN_SAMPLES",
    "SAMPLE_RATE",
    "check_rate",
    "crop_or_pad",
    "decode_source",
    "ffmpeg_decode",
    "decode_window",
    "input_window",
    "load_audio",
    "resample",
    "soundfile_reader",
]
