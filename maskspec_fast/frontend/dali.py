"""NVIDIA DALI input pipeline: audio files -> log-mel batches ``(B, 128, T)`` on the training device.

The graph computes exactly the reference recipe of :mod:`maskspec_fast.frontend.logmel` (the oracle):

    file bytes --fn.readers.file (or fn.external_source, see "mp3" below)
      -> fn.decoders.audio      decode, down-mix to mono, at the file's rate       (N_i,)  CPU operator
      -> fn.filter, fn.audio_resample, fn.filter   to 32 kHz with the reference's band limit (see
                                :func:`resampling_kernel`); left out when every file is at 32 kHz
      -> fn.slice               crop / zero-pad to clip_samples L                  (L,)    random start when
                                training, start 0 in evaluation (the reference ``crop_or_pad`` convention)
      -> fn.preemphasis_filter  Y[t] = X[t] - 0.97 X[t-1], then drop Y[0]          (L-1,)  -- see "border"
      -> fn.spectrogram         nfft 1024, symmetric Hann(800) via window_fn, hop 320, centered windows with
                                reflect padding, power 2                          (513, T), T = 1 + (L-1)//320
    -> torch (on the output device)
      -> mel                    Kaldi bank (128, 513) @ power                      (B, 128, T)
      -> log                    (log(mel + 1e-5) + 4.5) / 5

Design choices (why):

* **border**: DALI's pre-emphasis keeps the length and invents Y[0] from a border value; the reference is a
  valid 2-tap convolution that drops the first sample. We slice ``Y[1:]``, which equals the reference for any
  border policy, so frame counts and values match exactly (no one-frame difference).
* **window**: ``fn.spectrogram`` with ``window_length=800 < nfft=1024`` transforms the same 800 samples that
  ``torch.stft`` sees through its zero-padded, centered window (only the FFT phase differs, the power does not).
* **mel bank**: ``fn.mel_filter_bank`` builds Slaney/HTK triangles that are linear in Hz, not the Kaldi
  triangles that are linear in mel (plus a zero Nyquist column) that the reference uses. DALI has no general
  matrix-multiply operator, so the (128 x 513) product, the log and the affine scaling run in torch on the
  output device (one batched GEMM + an elementwise op; ``LogMel.from_power``, so fmin/fmax jitter works).
* **shuffle and shards**: DALI's ``random_shuffle`` is a local buffer shuffle and ``shuffle_after_epoch``
  rotates shards and cannot stick to one; neither gives an order that can be computed outside DALI. We need
  that order (to drop the duplicates the reader pads the last batch with, to name a bad file, to resume after
  replacing one), so the loader (:mod:`maskspec_fast.data.dali_loader`) takes the package's epoch order and
  rank share (:mod:`maskspec_fast.data.order`, the same as the DataLoader path's) and hands its file list to
  ``fn.readers.file`` in that order (``random_shuffle=False``, ``pad_last_batch=True``). Every item is read
  exactly once per epoch across shards; shard sizes differ by at most one item.
* **mp3**: DALI 2.4's ``fn.decoders.audio`` decodes WAV, FLAC and OGG (Vorbis/Opus) only ("File contains data
  in an unimplemented format" for mp3). When any item needs another codec, the source becomes an
  ``fn.external_source`` that reads raw bytes for the DALI-decodable files and transcodes the rest (mp3 with
  soundfile; mp4/m4a/webm/opus... with FFmpeg, :mod:`.ffmpeg`) in Python into an in-memory float WAV at the file's
  own rate, so the DALI graph (decoder,
  resampler and all) stays the same. That transcode runs on the Python feeding thread: slower than a pure
  reader, documented and measured in ``benchmarks/frontend.py``.
* **bad files**: with ``validate=True`` (default) every file's header is checked once up front with
  ``soundfile.info`` (a few tens of microseconds per file, in a thread pool). A file that fails the check, or
  one DALI fails to decode later, raises :class:`~maskspec_fast.frontend.audio.AudioFileError` naming the file -- or, with
  ``skip_bad_files=True``, is replaced by the next good file of the same shard and recorded in
  ``loader.skipped`` as ``(path, reason)``.

* **epochs**: one pipeline per epoch (its file list is that epoch's order). The reader keeps prefetching
  ``prefetch_queue_depth`` batches past the epoch's end; those are discarded (negligible for real data sets,
  visible on a 3-batch benchmark).

CPU backend (``device="cpu"``, DALI ``device_id=None``) or GPU (``device="cuda"``: decoding and resampling on
CPU threads -- DALI has no GPU audio decoder -- the rest on the GPU, ``device_id`` = the current CUDA device).
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
import torch

from .errors import AudioFileError
from .filters import resampling_cutoff, windowed_sinc
from .logmel import MelSettings

try:  # optional dependency: the package must import without it
    import nvidia.dali.fn as fn
    import nvidia.dali.math as dmath
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    _DALI_ERROR: str | None = None
except Exception as exc:  # ImportError, or a broken CUDA runtime inside DALI
    _DALI_ERROR = f"{type(exc).__name__}: {exc}"

INSTALL_HINT = "pip install 'maskspec_fast[dali]'"
# Containers DALI's audio decoder (libsndfile-based) reads; anything else is transcoded in Python (see mp3 above).
DALI_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG"})
_DALI_SUFFIXES = (".wav", ".flac", ".ogg", ".opus")


def dali_available() -> tuple[bool, str]:
    """``(True, "nvidia-dali <version>")`` when DALI imports, else ``(False, reason with the install hint)``."""
    if _DALI_ERROR is not None:
        return False, f"NVIDIA DALI is not usable ({_DALI_ERROR}); {INSTALL_HINT}"
    import nvidia.dali

    return True, f"nvidia-dali {nvidia.dali.__version__}"


def _require_dali() -> None:
    ok, reason = dali_available()
    if not ok:
        raise ImportError(f"the DALI front end needs NVIDIA DALI: {reason}")


def symmetric_hann(n: int) -> list[float]:
    """Symmetric Hann window ``w[k] = 0.5 - 0.5 cos(2 pi k / (n - 1))`` (``torch.hann_window(n, periodic=False)``)."""
    return torch.hann_window(n, periodic=False, dtype=torch.float64).tolist()


def _ffmpeg_file(path: str) -> bool:
    """Whether the registry (:mod:`.decoders`) gives ``path`` to FFmpeg (a container libsndfile cannot read)."""
    from .decoders import FFMPEG, choose, read_head

    try:
        return choose(read_head(path), path) == FFMPEG
    except OSError:
        return False


def _decode_native(path: str) -> tuple[np.ndarray, int]:
    """``(frames, channels)`` float32 at the file's own rate, by the registry's decoder (FFmpeg's: mono)."""
    if _ffmpeg_file(path):
        from .ffmpeg import open_stream

        s = open_stream(path, path)
        try:
            return s.decode_all()[:, None], s.rate
        finally:
            s.close()
    import soundfile as sf

    return sf.read(path, dtype="float32", always_2d=True)


def file_info(path: str) -> tuple[str, int]:
    """``(format, rate)`` of a file that passed :func:`header_check`: libsndfile's format name (``"WAV"``,
    ``"MP3"``...), or ``"FFMPEG"`` for the containers FFmpeg decodes (always transcoded), and the decoded rate."""
    if _ffmpeg_file(path):
        from .ffmpeg import open_stream

        s = open_stream(path, path)
        s.close()
        return "FFMPEG", s.rate
    import soundfile as sf

    info = sf.info(path)
    return info.format, int(info.samplerate)


def header_check(path: str) -> str | None:
    """Cheap validity check (header only, via ``soundfile.info``): ``None`` if fine, else the reason."""
    import soundfile as sf

    if _ffmpeg_file(path):  # mp4 / m4a / webm / opus ...: opening the container checks its header
        from .ffmpeg import open_stream

        try:
            open_stream(path, path).close()
        except AudioFileError as exc:
            return exc.problem
        return None
    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / OSError
        return f"{type(exc).__name__}: {exc}"
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        return f"empty or invalid audio (frames={info.frames}, rate={info.samplerate}, channels={info.channels})"
    return None


def needs_transcode(path: str, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt not in DALI_FORMATS
    return not path.lower().endswith(_DALI_SUFFIXES)


def _encoded_bytes(path: str, transcode: bool) -> np.ndarray:
    """Raw file bytes for DALI's decoder; other codecs become an in-memory float32 WAV at the file's own rate."""
    if not transcode:
        return np.fromfile(path, dtype=np.uint8)
    import soundfile as sf

    data, rate = _decode_native(path)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype="FLOAT")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def full_decode_error(path: str) -> str | None:
    """Decode a whole file with soundfile to find the culprit of a DALI failure."""
    try:
        data, _ = _decode_native(path)
    except AudioFileError as exc:
        return exc.problem
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if data.size == 0:
        return "no audio samples"
    return None


def is_decode_error(exc: BaseException) -> bool:
    """DALI reports operator failures as RuntimeError; only the decoder's (or the Python source's) name a file."""
    text = str(exc)
    return "decoders.audio" in text or "external_source" in text or "encoded data" in text


def resampling_kernel(rate: int, orig_sr: int, new_sr: int) -> np.ndarray:
    """Low-pass FIR run at ``rate`` Hz around DALI's resampler, ``(1, K)`` fp32 (``[[1.0]]`` when not needed).

    The filter of :mod:`maskspec_fast.frontend.filters` (the one inside the reference polyphase resampler
    :func:`maskspec_fast.frontend.audio.resample`), with cutoff ``0.97 min(orig, new) / 2`` Hz expressed at
    ``rate``. It is used at ``rate = orig`` before downsampling (anti-aliasing) and at ``rate = new`` after
    upsampling (anti-imaging).

    Why: DALI's resampler (``fn.decoders.audio(sample_rate=...)`` / ``fn.audio_resample``) interpolates with a
    16-lobe Hann-windowed sinc at the *input* rate. Downsampling, it does not band-limit at all: a 20 kHz tone of
    a 48 kHz file comes out at 12 kHz with full amplitude (measured, DALI 2.4), which would put 16-24 kHz
    content into the 8-15 kHz mel bins. Upsampling, its images above the old Nyquist sit some 40-60 dB down,
    far above the reference's. Filtering around it makes the result band-limited like the reference's.
    """
    if orig_sr == new_sr or orig_sr <= 0:
        return np.ones((1, 1), dtype=np.float32)
    h = windowed_sinc(resampling_cutoff(orig_sr, new_sr, rate))
    return h.astype(np.float32)[None, :]  # (1, K): a 2-D filter over a (1, N) "HW" signal


def build_logmel_pipeline(
    files: Sequence[str],
    *,
    batch_size: int,
    clip_samples: int,
    train: bool,
    seed: int,
    device: str = "cpu",
    num_threads: int = 2,
    transcode: Sequence[bool] | None = None,
    rates: Sequence[int] | None = None,
    settings: MelSettings | None = None,
    quality: float = 50.0,
    prefetch_queue_depth: int = 2,
):
    """Build a DALI pipeline over ``files`` in the given order -> ``(power (B, n_fft/2+1, T) fp32, pos (B,) int32)``.

    ``pos[b]`` is the position of sample b in ``files`` (the reader's label), so any per-item label travels with
    its audio. The last batch is padded by repeating the last file (``pad_last_batch``); callers drop it.
    ``transcode[i]`` routes file i through the Python transcoder (an ``fn.external_source`` instead of
    ``fn.readers.file``; see the module docstring). ``rates[i]`` is file i's sample rate (from a header check;
    read lazily with ``soundfile.info`` when ``None``); when every file is already at 32 kHz the anti-alias filter
    and the resampler are left out of the graph. ``quality`` is DALI's resampler quality (0: 3 sinc lobes,
    50: 16 lobes, 100: 64 lobes).
    """
    _require_dali()
    s = settings or MelSettings()
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if not files:
        raise ValueError("build_logmel_pipeline needs at least one file")
    if clip_samples < 2 + s.n_fft // 2:
        raise ValueError(f"clip of {clip_samples} samples is too short for n_fft={s.n_fft}")
    files = [os.fspath(f) for f in files]
    use_external = transcode is not None and any(transcode)
    need_resample = rates is None or any(int(r) != s.sample_rate for r in rates)
    device_id = torch.cuda.current_device() if device == "cuda" else None
    window = symmetric_hann(s.win_length)
    nbatch = math.ceil(len(files) / batch_size)

    def positions(batch_index: int) -> list[int]:
        # Same order and padding as the reader: batch i holds files[i B : (i+1) B], the last repeats its tail.
        if batch_index >= nbatch:
            raise StopIteration
        return [min(batch_index * batch_size + j, len(files) - 1) for j in range(batch_size)]

    def external(batch_index: int):
        pos = positions(batch_index)
        enc = [_encoded_bytes(files[p], bool(transcode[p])) for p in pos]
        return enc, [np.array([p], dtype=np.int32) for p in pos]

    def kernels(batch_index: int):
        # (before, after) the resampler: anti-aliasing at the file's rate when downsampling, anti-imaging at
        # 32 kHz when upsampling; the other one is the identity [[1.0]].
        new = s.sample_rate
        orig = [_file_rate(files[p], rates, p) for p in positions(batch_index)]
        pre = [resampling_kernel(r, r, new) if r > new else _IDENTITY for r in orig]
        post = [resampling_kernel(new, r, new) if 0 < r < new else _IDENTITY for r in orig]
        return pre, post

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        prefetch_queue_depth=prefetch_queue_depth,
        exec_dynamic=True,
    )
    def pipe():
        if use_external:
            enc, pos = fn.external_source(source=external, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT32])
        else:
            enc, pos = fn.readers.file(
                files=files,
                labels=list(range(len(files))),
                random_shuffle=False,
                pad_last_batch=True,
                name="reader",
            )
        audio, rate = fn.decoders.audio(enc, downmix=True)  # (N_i,) mono at the file's own rate
        if need_resample:
            pre_k, post_k = fn.external_source(
                source=kernels, num_outputs=2, batch=True, dtype=[types.FLOAT, types.FLOAT], ndim=[2, 2]
            )
            # fn.filter is 2-D/3-D: view the signal as a (1, N) image; zero-padded, centered FIR (K odd).
            x = fn.filter(fn.reshape(audio, shape=[1, -1], layout="HW"), pre_k, border="constant", mode="same")
            x = fn.audio_resample(fn.reshape(x, shape=[-1]), in_rate=rate, out_rate=float(s.sample_rate),
                                  quality=quality)  # (~N_i * 32000 / rate_i,)
            x = fn.filter(fn.reshape(x, shape=[1, -1], layout="HW"), post_k, border="constant", mode="same")
            audio = fn.reshape(x, shape=[-1])
        if train:
            # start ~ U{0, ..., max(N_i - L, 0)}: floor(u * (room + 1)), clamped against u -> 1 rounding.
            length = audio.shape(dtype=types.INT32)[0]  # slice anchors are int32
            room = dmath.max(length - clip_samples, 0)
            u = fn.random.uniform(range=[0.0, 1.0], dtype=types.FLOAT)
            start = fn.cast(u * fn.cast(room + 1, dtype=types.FLOAT), dtype=types.INT32)
            start = fn.reshape(dmath.min(start, room), shape=[1])  # (1,): one anchor per sliced axis
        else:
            start = [0]
        clip = fn.slice(
            audio,
            start=start,
            shape=[clip_samples],
            axes=[0],
            out_of_bounds_policy="pad",
            fill_values=0.0,
        )  # (L,) zero-padded at the end when the file is shorter
        if device == "cuda":
            clip = clip.gpu()
        pre = fn.preemphasis_filter(clip, preemph_coeff=s.preemphasis, border="zero")[1:]  # (L-1,) = reference
        power = fn.spectrogram(
            pre,
            nfft=s.n_fft,
            window_length=s.win_length,
            window_step=s.hop_length,
            window_fn=window,
            center_windows=True,
            reflect_padding=True,
            power=2,
            layout="ft",
        )  # (n_fft/2+1, T)
        return power, pos

    p = pipe()
    p.build()
    return p


_IDENTITY = np.ones((1, 1), dtype=np.float32)


def _file_rate(path: str, rates: Sequence[int] | None, position: int) -> int:
    if rates is not None:
        return int(rates[position])
    try:
        return file_info(path)[1]
    except Exception:  # a bad file: let the decoder fail on it, so the error is attributed to that file
        return -1


__all__ = [
    "DALI_FORMATS",
    "build_logmel_pipeline",
    "dali_available",
    "full_decode_error",
    "header_check",
    "is_decode_error",
    "needs_transcode",
    "resampling_kernel",
    "symmetric_hann",
]
