"""FFmpeg decoding (PyAV): the containers users hold (AAC in mp4 with a video track, AAC in m4a, Opus in webm /
ogg / bare opus), written by FFmpeg's own encoders; alignment, window decoding, the registry, bad containers.

Tolerances (float32 output, full scale 1):
  * whole decode vs a second route (PyAV's resampler to packed float, our down-mix and resampler): 1e-6, the same
    decoder output through another conversion;
  * alignment with the source: the cross-correlation peak at lag 0 (the AAC priming / Opus pre-skip removed);
  * a window vs the whole decode cropped: 2e-4 on tonal content. After a seek the decoder starts cold; its
    pre-roll (0.1 s) makes AAC match to float rounding (~5e-6) and Opus to ~1e-4 (its state converges, not resets).
    Noise-like content is not used: AAC's perceptual noise substitution draws random values in the decoder, so
    two decodes of the same noise band differ whatever the alignment.
"""
import io

import numpy as np
import pytest
import torch
from audio_sets import encode_av, encode_video_only, tonal

from maskspec_fast.frontend.audio import AudioFileError, load_audio, resample

av = pytest.importorskip("av")

CASES = [("mp4", 44100), ("mp4", 48000), ("m4a", 44100), ("m4a", 48000), ("webm", 48000), ("ogg", 48000),
         ("opus", 48000)]


def _file(tmp_path, kind, rate, seconds=3.0, seed=0):
    x = tonal(seconds, rate, 2, seed)
    path = tmp_path / f"clip_{rate}.{kind}"
    encode_av(str(path), x, rate, kind)
    return path, x


def _lag(a: np.ndarray, b: np.ndarray, reach: int = 4000) -> int:
    """Lag of ``b`` relative to ``a`` at the cross-correlation peak, within +-reach."""
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    size = 1 << int(np.ceil(np.log2(2 * n)))
    cc = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lags = np.r_[np.arange(0, reach + 1), np.arange(-reach, 0)]
    vals = np.r_[cc[: reach + 1], cc[size - reach :]]
    return int(lags[int(np.argmax(vals))])


@pytest.mark.parametrize("kind,rate", CASES)
def test_whole_decode_aligned_and_equal_to_second_route(kind, rate, tmp_path):
    from audio_sets import av_decode_ref

    path, x = _file(tmp_path, kind, rate)
    got = load_audio(path).numpy()  # (N,) at 32 kHz
    ref, file_rate = av_decode_ref(path)
    assert file_rate == rate
    ref32 = resample(torch.from_numpy(ref.mean(axis=0)), rate, 32000).numpy()
    assert got.shape == ref32.shape
    assert np.abs(got - ref32).max() <= 1e-6
    src32 = resample(torch.from_numpy(x.mean(axis=0)), rate, 32000).numpy()
    assert _lag(src32, got) == 0  # the priming / pre-skip is not in the output
    # and the decode is close to the source: a lossy codec, not a shifted or a different signal
    n = min(len(src32), len(got))
    err = got[1000 : n - 1000] - src32[1000 : n - 1000]
    assert np.sqrt(np.mean(err**2)) < 0.1 * np.sqrt(np.mean(src32**2))


def _declared_out(path) -> int:
    from maskspec_fast.frontend.ffmpeg import _Stream

    s = _Stream(str(path), path)
    try:
        return -(-s.declared_frames() * 32000 // s.rate)
    finally:
        s.close()


@pytest.mark.parametrize("kind,rate", CASES)
@pytest.mark.parametrize("coarse_seek", [30.0, 0.0])
def test_window_equals_whole_cropped(kind, rate, coarse_seek, tmp_path, monkeypatch):
    """A training crop decodes only its window (seek + pre-roll + align by timestamps) and matches the whole
    decode cropped; ``coarse_seek=0`` forces seeks in WebM/Matroska too (ms timestamps, snapped for Opus)."""
    from maskspec_fast.frontend import ffmpeg

    monkeypatch.setattr(ffmpeg, "COARSE_SEEK_SECONDS", coarse_seek)
    path, _ = _file(tmp_path, kind, rate, seconds=6.0, seed=1)
    whole = load_audio(path).numpy()
    n_declared = _declared_out(path)
    assert abs(n_declared - len(whole)) < 0.03 * 32000  # the declared length is close to the decoded one
    clip = 32000
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        got = load_audio(path, max_samples=clip, generator=g).numpy()
        start = int(torch.randint(0, n_declared - clip + 1, (), generator=torch.Generator().manual_seed(seed)))
        ref = whole[start : start + clip]
        assert len(got) == len(ref) == clip
        assert np.abs(got - ref).max() <= 2e-4, (seed, start)
    # evaluation: the first clip_samples
    assert np.array_equal(load_audio(path, max_samples=clip).numpy(), whole[:clip])


def test_window_reads_only_its_frames(tmp_path, monkeypatch):
    """The window decode seeks: the frames decoded for a 1 s window late in a 20 s m4a are those of the window."""
    from maskspec_fast.frontend import ffmpeg

    path, _ = _file(tmp_path, "m4a", 48000, seconds=20.0)
    count = {"n": 0}
    real = ffmpeg._Stream._frames

    def counting(stream):
        for frame in real(stream):
            count["n"] += frame.samples
            yield frame

    monkeypatch.setattr(ffmpeg._Stream, "_frames", counting)
    s = ffmpeg._Stream(str(path), path)
    part = s.read(15 * 48000, 16 * 48000)
    s.close()
    assert len(part) == 48000
    assert count["n"] < 1.3 * 48000  # the window, the 0.1 s pre-roll and a frame: not 16 s from the start


@pytest.mark.parametrize("kind", ["mp4", "m4a", "webm", "opus"])
def test_bytes_in_memory_equal_file(kind, tmp_path):
    from maskspec_fast.data.decode import decode_bytes

    path, _ = _file(tmp_path, kind, 48000)
    data = path.read_bytes()
    assert np.array_equal(decode_bytes(data, f"x.h5:0:{path.name}").numpy(), load_audio(path).numpy())
    # chosen by content: a wrong or missing extension does not matter
    assert np.array_equal(decode_bytes(data, "entry").numpy(), load_audio(path).numpy())


def test_registry_sniffs_content():
    from audio_sets import encode, tone

    from maskspec_fast.frontend.decoders import FFMPEG, SNDFILE, choose, sniff

    for fmt in ("WAV", "FLAC", "MP3", "OGG"):
        assert sniff(encode(tone(0.2, 440), fmt)[:64]) == SNDFILE, fmt
    for kind in ("mp4", "m4a", "webm", "ogg", "opus"):
        buf = io.BytesIO()
        encode_av(buf, tonal(0.3, 48000), 48000, kind)
        assert sniff(buf.getvalue()[:64]) == FFMPEG, kind
    assert sniff(b"\xff\xf1\x50\x80" + bytes(60)) == FFMPEG  # ADTS AAC
    assert sniff(b"\xff\xfb\x90\x00" + bytes(60)) == SNDFILE  # MPEG-1 layer III
    assert choose(b"????" * 16, "a.m4a") == FFMPEG and choose(b"????" * 16, "a.flac") == SNDFILE


def test_folder_and_classes_list_ffmpeg_files(tmp_path):
    from maskspec_fast.data import build_dataset

    for i, kind in enumerate(["mp4", "m4a", "webm", "opus"]):
        d = tmp_path / "cls" / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        encode_av(str(d / f"f{i}.{kind}"), tonal(1.0, 48000, seed=i), 48000, kind)
    ds = build_dataset(f"classes:{tmp_path / 'cls'}", clip_seconds=0.5)
    assert len(ds) == 4 and ds.class_names == ["a", "b"]
    for i in range(4):
        assert ds[i]["wave"].shape == (16000,) and ds[i]["wave"].abs().max() > 0.05
    assert len(build_dataset(f"folder:{tmp_path / 'cls'}")) == 4


# --------------------------------------------------------------------------------------------- bad containers
def bad_containers(folder):
    """``{name: (path, expected words)}``: a video without sound, a cut mp4, an empty audio stream, an unknown
    codec (a Matroska file's codec id renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    p = folder / "video_only.mp4"
    encode_video_only(p)
    out["video_only"] = (p, "no audio stream")
    good = folder / "good.mp4"
    encode_av(str(good), tonal(2.0, 48000), 48000, "mp4")
    data = good.read_bytes()
    good.unlink()
    cut = folder / "cut.mp4"
    cut.write_bytes(data[: data.index(b"moov") - 4] if b"moov" in data else data[: len(data) // 2])
    out["truncated"] = (cut, "no moov atom")
    empty = folder / "empty_stream.mkv"
    encode_video_only(empty, with_empty_audio=True)
    out["zero_length"] = (empty, "0 samples")
    mkv = io.BytesIO()
    encode_av(mkv, tonal(1.0, 48000), 48000, "mkv")
    unknown = folder / "unknown_codec.mkv"
    unknown.write_bytes(mkv.getvalue().replace(b"A_OPUS", b"A_ZZZZ"))  # a Matroska codec id no decoder has
    out["unknown_codec"] = (unknown, "unknown audio codec")
    return out


def test_bad_containers_one_line_naming_the_file(tmp_path):
    for name, (path, words) in bad_containers(tmp_path).items():
        with pytest.raises(AudioFileError, match=words) as e:
            load_audio(path)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(str(path)), (name, msg)
        with pytest.raises(AudioFileError):  # the same from memory
            from maskspec_fast.data.decode import decode_bytes

            decode_bytes(path.read_bytes(), f"mem:{path.name}")


def test_decoder_benchmark_quick(tmp_path):
    """benchmarks/decoders.py on tiny inputs: every format is read, the registry's pick reads it, and the
    compressed formats' windows align (lag 0)."""
    import importlib.util
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location("bench_decoders", bench_dir / "decoders.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        rows = bench.run(bench.parse_args(["--clips", "1", "--seconds", "2", "--repeats", "1", "--windows", "2",
                                           "--results-file", str(tmp_path / "d.json")]))
    finally:
        sys.path.remove(str(bench_dir))
    assert [r["format"] for r in rows] == list(bench.FORMATS)
    for r in rows:
        assert r["load_audio_s_per_s"] > 0 and (r["sndfile_s_per_s"] or r["ffmpeg_s_per_s"])
        if r["window_lag"] is not None:
            assert r["window_lag"] == 0, r


def test_tar_members_hdf5_and_hf_bytes_of_ffmpeg_containers(tmp_path):
    """The same registry behind tar members (KEY.m4a / KEY.webm), HDF5 entries and ``hf:`` audio bytes: each
    clip equals load_audio of the file."""
    pytest.importorskip("webdataset")
    pytest.importorskip("h5py")
    pytest.importorskip("pyarrow")
    import h5py
    from audio_sets import hf_table, make_hf_parquet, make_shards

    from maskspec_fast.data import build_dataset

    files, blobs = [], []
    for i, kind in enumerate(["m4a", "webm", "mp4", "opus"]):
        path = tmp_path / f"src{i}.{kind}"
        encode_av(str(path), tonal(1.0, 48000, seed=i), 48000, kind)
        files.append(path)
        blobs.append(path.read_bytes())
    refs = [load_audio(p).numpy()[:16000] for p in files]
    shards = make_shards(tmp_path / "wds", [(f"k{i}", b, [i]) for i, b in enumerate(blobs[:2])], 2, fmt="m4a")
    # a webm member too: the field is the member's extension, the content decides the decoder
    make_shards(tmp_path / "wds2", [("k9", blobs[1], [1])], 1, fmt="webm")
    h5 = tmp_path / "as.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("audio_name", data=np.array([p.name.encode() for p in files], dtype="S20"))
        d = f.create_dataset("mp3", shape=(4,), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        for i, b in enumerate(blobs):
            d[i] = np.frombuffer(b, dtype=np.uint8)
    hf = make_hf_parquet(tmp_path / "hf", hf_table(blobs, [p.name for p in files], [0, 1, 2, 0], ["a", "b", "c"]))
    for spec, idx in ((f"webdataset:{shards}", [0, 1]), (f"webdataset:{tmp_path / 'wds2' / 'shard-000000.tar'}", [1]),
                      (f"hdf5:{h5}:num_classes=3", [0, 1, 2, 3]), (f"hf:{hf}", [0, 1, 2, 3])):
        ds = build_dataset(spec, clip_seconds=0.5)
        waves = [s["wave"].numpy() for s in ds] if getattr(ds, "streaming", False) else [ds[i]["wave"].numpy()
                                                                                         for i in range(len(ds))]
        assert len(waves) == len(idx), spec
        for w, i in zip(waves, idx):
            assert np.array_equal(w, refs[i]), (spec, i)


def test_fallback_to_ffmpeg_only_for_recognised_content(tmp_path):
    """A WAV holding a codec libsndfile lacks (mp3, format tag 0x55) goes to FFmpeg; random bytes named .wav stay
    a corrupt file, never decoded noise."""
    import struct

    rng = np.random.default_rng(0)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioFileError, match="corrupt or undecodable audio"):
        load_audio(junk)
    # RIFF/WAVE with format tag 0x55 (MPEG layer 3 inside WAV): libsndfile refuses it, FFmpeg reads it
    from audio_sets import encode, tone

    mp3 = encode(tone(1.0, 440, rate=32000), "MP3", 32000)
    fmt = struct.pack("<HHIIHH", 0x55, 1, 32000, 4000, 1, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(mp3)) + mp3
    wav = tmp_path / "mp3_in.wav"
    wav.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    got = load_audio(wav).numpy()
    ref = load_audio_bytes_as_mp3(tmp_path, mp3)
    # the same sound; inside WAV the mp3's LAME header frame is decoded as a frame and its delay is not removed
    # (1152 + 1105 samples here), so the decode is shifted by them: compared after aligning
    lag = _lag(ref, got)
    assert 0 <= lag <= 3000
    n = min(len(got) - lag, len(ref)) - 2000
    assert n > 25000 and np.abs(got[lag : lag + n] - ref[:n]).max() < 0.05


def load_audio_bytes_as_mp3(tmp_path, data: bytes) -> np.ndarray:
    p = tmp_path / "ref.mp3"
    p.write_bytes(data)
    return load_audio(p).numpy()
