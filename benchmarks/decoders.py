"""Decoder choice by measurement: libsndfile vs FFmpeg (PyAV) for every format, on one core.

    python benchmarks/decoders.py                # ~1 minute on an idle core
    python benchmarks/decoders.py --clips 8 --seconds 10 --repeats 5

For each format (files written by the real producers: libsndfile's encoders for wav/flac/mp3/vorbis/opus-in-ogg,
FFmpeg's through PyAV for AAC in m4a and in mp4 beside a video track, Opus in webm), ``--clips`` files of
``--seconds`` s, stereo, at 48 kHz (44.1 kHz for the m4a row, as iTunes / YouTube AAC often is):

  decode     seconds of audio per second of one core (``torch.set_num_threads(1)``) to decode whole files to mono
             float32 at the file's own rate: the decoder's own cost (libsndfile: ``SoundFile.read``; FFmpeg: our
             ``open_stream(...).decode_all()``), median over ``--repeats``
  load_audio the same through ``load_audio`` (the registry's pick, + resampling to 32 kHz): what a data set pays
  window     max |window - whole[a:b]| over 1 s windows at random starts (``read(a, b)`` after a seek) and the
             lag of the cross-correlation peak between them: seek accuracy

Prints a table and writes ``benchmarks/results/decoders.json``.
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
sys.path.insert(2, str(Path(__file__).resolve().parent.parent / "tests"))  # the test inputs' FFmpeg writer
from _common import environment, print_table, write_json  # noqa: E402
from audio_sets import encode_with_av as encode_av  # noqa: E402  (one FFmpeg writer for tests and benchmarks)

from maskspec_fast.frontend.audio import load_audio  # noqa: E402

# name -> (producer, container / soundfile format, codec / subtype, rate, video track)
FORMATS = {
    "wav pcm16": ("sndfile", "WAV", "PCM_16", 48000, False),
    "flac": ("sndfile", "FLAC", "PCM_16", 48000, False),
    "mp3": ("sndfile", "MP3", "MPEG_LAYER_III", 48000, False),
    "ogg vorbis": ("sndfile", "OGG", "VORBIS", 48000, False),
    "ogg opus": ("sndfile", "OGG", "OPUS", 48000, False),
    "m4a aac": ("av", "ipod", "aac", 44100, False),
    "mp4 aac+video": ("av", "mp4", "aac", 48000, True),
    "webm opus": ("av", "webm", "libopus", 48000, False),
}
EXT = {"WAV": ".wav", "FLAC": ".flac", "MP3": ".mp3", "OGG": ".ogg", "ipod": ".m4a", "mp4": ".mp4", "webm": ".webm"}


def make_clip(seconds: float, rate: int, seed: int) -> np.ndarray:
    """``(2, N)`` float32: five tones and low-passed noise per channel, content that compresses like real audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(2):
        x = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(80, 8000) * t + rng.uniform(0, 6))
                for _ in range(5))
        out.append(x + 0.05 * np.convolve(rng.standard_normal(t.shape), np.ones(8) / 8, mode="same"))
    return np.stack(out).astype(np.float32)


def write_file(path: Path, wave: np.ndarray, spec: tuple) -> None:
    producer, fmt, codec, rate, video = spec
    if producer == "sndfile":
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, wave.T, rate, format=fmt, subtype=codec)
        path.write_bytes(buf.getvalue())
    else:
        encode_av(str(path), wave, rate, fmt, codec, video)


def decode_sndfile(path) -> np.ndarray:
    import soundfile as sf

    x, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return x.mean(axis=1)


def decode_ffmpeg(path) -> np.ndarray:
    from maskspec_fast.frontend.ffmpeg import open_stream

    s = open_stream(str(path), path)
    try:
        return s.decode_all()
    finally:
        s.close()


def speed(fn, files: list[Path], seconds_each: float, repeats: int) -> float | None:
    """Median audio-seconds per second of ``fn`` over all ``files``; None if the decoder cannot read them."""
    try:
        fn(files[0])
    except Exception:  # this decoder does not read the format
        return None
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for f in files:
            fn(f)
        rates.append(len(files) * seconds_each / (time.perf_counter() - t))
    return statistics.median(rates)


def window_accuracy(path: Path, rate: int, windows: int, seed: int) -> tuple[float, int]:
    """Max |window - whole| and the largest |lag| of the cross-correlation peak, over ``windows`` 1 s windows
    decoded after a seek (FFmpeg's reader; libsndfile's seeks are exact by construction)."""
    from maskspec_fast.frontend.ffmpeg import open_stream

    whole = decode_ffmpeg(path)
    rng = np.random.default_rng(seed)
    err, worst_lag = 0.0, 0
    for _ in range(windows):
        a = int(rng.integers(int(0.2 * rate), len(whole) - rate))
        s = open_stream(str(path), path)
        got = s.read(a, a + rate)
        s.close()
        ref = whole[a : a + rate]
        err = max(err, float(np.abs(got - ref).max()))
        n = len(ref)
        cc = np.fft.irfft(np.fft.rfft(got, 2 * n) * np.conj(np.fft.rfft(ref, 2 * n)), 2 * n)
        lag = int(np.argmax(cc))
        worst_lag = max(worst_lag, abs(lag if lag < n else lag - 2 * n))
    return err, worst_lag


def run(args) -> list[dict]:
    torch.set_num_threads(1)
    env = environment(torch.device("cpu"))
    try:
        import av

        env["pyav"] = f"PyAV {av.__version__}, FFmpeg libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}"
    except ImportError as e:
        raise SystemExit(f"PyAV is needed for this benchmark ({e})") from e
    import soundfile as sf

    env["libsndfile"] = sf.__libsndfile_version__
    rows = []
    with tempfile.TemporaryDirectory(prefix="maskspec_decoders_") as tmp:
        for name, spec in FORMATS.items():
            rate = spec[3]
            files = []
            for i in range(args.clips):
                p = Path(tmp) / f"{name.replace(' ', '_').replace('+', '_')}_{i}{EXT[spec[1]]}"
                write_file(p, make_clip(args.seconds, rate, i), spec)
                files.append(p)
            sndfile = speed(decode_sndfile, files, args.seconds, args.repeats)
            ffmpeg = speed(decode_ffmpeg, files, args.seconds, args.repeats)
            loaded = speed(lambda f: load_audio(f), files, args.seconds, args.repeats)
            err, lag = window_accuracy(files[0], rate, args.windows, 0) if spec[0] == "av" or "opus" in name else (
                None, None)
            from maskspec_fast.frontend.decoders import choose, read_head

            row = {"format": name, "rate": rate, "sndfile_s_per_s": sndfile, "ffmpeg_s_per_s": ffmpeg,
                   "registry": choose(read_head(files[0]), str(files[0])), "load_audio_s_per_s": loaded,
                   "window_max_err": err, "window_lag": lag,
                   "mb_per_hour": sum(f.stat().st_size for f in files) / (len(files) * args.seconds) * 3600 / 1e6}
            rows.append(row)
            print(f"{name}: sndfile {sndfile or 0:.0f}, ffmpeg {ffmpeg or 0:.0f}, load_audio {loaded:.0f} audio-s/s",
                  flush=True)
    print(f"\n{env['cpu']}, 1 thread, torch {env['torch']}, commit {env['commit']}, {env['pyav']}, libsndfile "
          f"{env['libsndfile']}; {args.clips} stereo clips of {args.seconds} s per format, {args.repeats} repeats")
    cols = [("format", "format"), ("rate", "Hz"), ("sndfile_s_per_s", "libsndfile s/s"),
            ("ffmpeg_s_per_s", "FFmpeg s/s"), ("registry", "registry picks"), ("load_audio_s_per_s", "load_audio s/s"),
            ("window_max_err", "window max err"), ("window_lag", "lag"), ("mb_per_hour", "MB/h")]
    print_table(rows, cols)
    write_json(args.results_file, {"env": env, "args": vars(args), "rows": rows})
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--windows", type=int, default=5, help="seek-accuracy windows per compressed format")
    p.add_argument("--results-file", default="benchmarks/results/decoders.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
