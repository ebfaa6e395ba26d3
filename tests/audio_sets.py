"""Test inputs built the way their producers build them: AudioSet HDF5 files of real mp3 bytes (h5py, vlen
uint8, packbits targets), WebDataset tar shards (webdataset.TarWriter, KEY.flac + KEY.json), Hugging Face
parquet / save_to_disk files (pyarrow, with the features metadata ``datasets`` writes)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

RATE = 32000


def tone(seconds: float, freq: float, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """A (N,) float32 tone plus a little noise, amplitude ~0.3."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def encode(wave: np.ndarray, fmt: str, rate: int = RATE) -> bytes:
    """The bytes of a real audio file (libsndfile's encoders: MP3, FLAC, WAV PCM16, OGG)."""
    import soundfile as sf

    buf = io.BytesIO()
    subtype = {"FLAC": "PCM_16", "WAV": "PCM_16"}.get(fmt)
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_hdf5(path: Path, names: list[str], waves: list[np.ndarray], labels: list[list[int]] | None,
              num_classes: int = 527, rate: int = RATE) -> list[bytes]:
    """An HDF5 file in the PaSST / MaskSpec layout; returns the mp3 bytes written (one per clip)."""
    import h5py

    mp3s = [encode(w, "MP3", rate) for w in waves]
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        d = f.create_dataset("mp3", shape=(len(names),), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        for i, b in enumerate(mp3s):
            d[i] = np.frombuffer(b, dtype=np.uint8)
        if labels is not None:
            hot = np.zeros((len(names), num_classes), dtype=np.uint8)
            for i, labs in enumerate(labels):
                hot[i, labs] = 1
            f.create_dataset("target", data=np.packbits(hot, axis=1))
    return mp3s


def make_shards(folder: Path, samples: list[tuple[str, bytes, object]], per_shard: int, fmt: str = "flac",
                prefix: str = "shard", label_member: str = "json") -> str:
    """Tar shards of ``(key, audio bytes, labels or None)``; returns the brace pattern. ``label_member="cls"``:
    the label as webdataset's ``KEY.cls`` member (an int, written as text by TarWriter's encoder)."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    n = -(-len(samples) // per_shard)
    for s in range(n):
        with open(folder / f"{prefix}-{s:06d}.tar", "wb") as fh:
            w = wds.TarWriter(fh, mtime=0)
            for key, audio, labels in samples[s * per_shard : (s + 1) * per_shard]:
                sample = {"__key__": key, fmt: audio}
                if labels is not None and label_member == "cls":
                    sample["cls"] = int(labels)
                elif labels is not None:
                    sample["json"] = {"labels": labels}
                w.write(sample)
            w.close()
    return str(folder / f"{prefix}-{{000000..{n - 1:06d}}}.tar")


def hf_features(rate: int, names: list[str] | None, multilabel: bool = False) -> dict:
    feats = {"audio": {"sampling_rate": rate, "_type": "Audio"}}
    if names is not None:
        cl = {"names": names, "_type": "ClassLabel"}
        feats["label"] = {"feature": cl, "_type": "Sequence"} if multilabel else cl
    return feats


def hf_table(audio: list[bytes], paths: list[str], labels, names, rate: int = RATE, multilabel: bool = False):
    import pyarrow as pa

    cols = {"audio": pa.array([{"bytes": b, "path": p} for b, p in zip(audio, paths)],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
    if labels is not None:
        cols["label"] = pa.array(labels, type=pa.list_(pa.int64()) if multilabel else pa.int64())
    table = pa.table(cols)
    meta = {"info": {"features": hf_features(rate, names, multilabel)}}
    return table.replace_schema_metadata({"huggingface": json.dumps(meta)})


def make_hf_parquet(folder: Path, table, rows_per_group: int = 3) -> Path:
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "train-00000-of-00001.parquet", row_group_size=rows_per_group)
    return folder


def hf_string_table(audio: list[bytes], paths: list[str], labels: list[str] | None, rate: int = RATE):
    """A table as ``datasets`` writes one whose label column is plain strings (``Value("string")``, no
    ``ClassLabel``): the features metadata names the column's type only."""
    import pyarrow as pa

    cols = {"audio": pa.array([{"bytes": b, "path": p} for b, p in zip(audio, paths)],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
    feats: dict = {"audio": {"sampling_rate": rate, "_type": "Audio"}}
    if labels is not None:
        cols["label"] = pa.array(labels, type=pa.string())
        feats["label"] = {"dtype": "string", "_type": "Value"}
    return pa.table(cols).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": feats}})})


def make_hf_hub(folder: Path, splits: dict, rows_per_group: int = 2) -> Path:
    """The hub's parquet layout (what ``push_to_hub`` writes): ``data/<split>-00000-of-00001.parquet`` per split."""
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, table in splits.items():
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet", row_group_size=rows_per_group)
    return folder


def make_hf_saved(folder: Path, table, names, rate: int = RATE, multilabel: bool = False) -> Path:
    """The ``Dataset.save_to_disk`` layout: an Arrow IPC stream file, dataset_info.json, state.json."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table, max_chunksize=2)
    (folder / "dataset_info.json").write_text(json.dumps({"features": hf_features(rate, names, multilabel)}))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}],
                                                   "_fingerprint": "0", "_format_type": None}))
    return folder


def decode_ref(data: bytes, rate: int = RATE) -> np.ndarray:
    """libsndfile's decode of ``data`` via a real file path (the load_audio route), float32 mono at ``rate``."""
    import tempfile

    import soundfile as sf

    from maskspec_fast.frontend.audio import load_audio

    info = sf.info(io.BytesIO(data))
    ext = {"MP3": ".mp3", "FLAC": ".flac", "WAV": ".wav", "OGG": ".ogg"}[info.format]
    with tempfile.NamedTemporaryFile(suffix=ext) as f:
        f.write(data)
        f.flush()
        return load_audio(f.name, rate).numpy()


# ------------------------------------------------------------------------------- FFmpeg's encoders (PyAV)
# (container format, audio codec, with a video track): what VGGSound (mp4), yt-dlp's AudioSet (m4a, webm) and bare
# Opus downloads hold
AV_KINDS = {
    "mp4": ("mp4", "aac", True),
    "m4a": ("ipod", "aac", False),
    "webm": ("webm", "libopus", False),
    "ogg": ("ogg", "libopus", False),
    "opus": ("opus", "libopus", False),
    "mkv": ("matroska", "libopus", False),
}


def tonal(seconds: float, rate: int, channels: int = 2, seed: int = 0) -> np.ndarray:
    """``(channels, N)`` float32 tones and a chirp, amplitude-modulated, no noise: AAC codes noise-like bands with
    perceptual noise substitution (random in the decoder, so two decodes of it differ), tones are decoded the
    same way every time."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    chans = []
    for _ in range(channels):
        f0, f1 = rng.uniform(200, 1500), rng.uniform(100, 400)
        x = 0.25 * np.sin(2 * np.pi * f0 * t) * (1 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        x += 0.15 * np.sin(2 * np.pi * (f1 + 150 * t) * t)
        chans.append(x)
    return np.stack(chans).astype(np.float32)


def encode_av(path, wave: np.ndarray, rate: int, kind: str = "m4a") -> None:
    """Write ``wave`` ``(channels, N)`` float32 with FFmpeg's encoders through PyAV: ``kind`` in :data:`AV_KINDS`
    (AAC in mp4 with an mpeg4 video track, AAC in m4a, Opus in webm / ogg / bare opus / mkv). ``path``: a file
    path or a binary file object."""
    encode_with_av(path, wave, rate, *AV_KINDS[kind])


def encode_with_av(path, wave: np.ndarray, rate: int, fmt: str, codec: str, video: bool = False) -> None:
    """``wave`` ``(channels, N)`` float32 through FFmpeg's encoder ``codec`` in container ``fmt`` (PyAV), with a
    10 fps mpeg4 video track when ``video``; also what ``benchmarks/decoders.py`` writes its inputs with."""
    import fractions

    import av

    layout = "stereo" if wave.shape[0] == 2 else "mono"
    out = av.open(path, "w", format=fmt)
    v = None
    if video:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    a = out.add_stream(codec, rate=rate, layout=layout)
    hop, shown = 1024, 0
    for i in range(0, wave.shape[1], hop):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, i : i + hop]), format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
        for p in a.encode(frame):
            out.mux(p)
        while v is not None and shown / 10 <= (i + hop) / rate:  # 10 fps of grey frames beside the sound
            img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (7 * shown) % 256, np.uint8), format="rgb24")
            img.pts = shown
            for p in v.encode(img):
                out.mux(p)
            shown += 1
    for p in a.encode(None):
        out.mux(p)
    if v is not None:
        for p in v.encode(None):
            out.mux(p)
    out.close()


def encode_video_only(path, with_empty_audio: bool = False) -> None:
    """An mp4 with a video track and no audio stream (``with_empty_audio``: a Matroska file whose Opus stream has
    no packet: the mp4 muxer drops empty tracks, Matroska keeps them)."""
    import av

    out = av.open(str(path), "w", format="matroska" if with_empty_audio else "mp4")
    v = out.add_stream("mpeg4", rate=10)
    v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
    if with_empty_audio:
        out.add_stream("libopus", rate=48000, layout="stereo")
    for k in range(20):
        img = av.VideoFrame.from_ndarray(np.full((48, 64, 3), k * 9, np.uint8), format="rgb24")
        img.pts = k
        for p in v.encode(img):
            out.mux(p)
    for p in v.encode(None):
        out.mux(p)
    out.close()


def av_decode_ref(path) -> tuple[np.ndarray, int]:
    """A second route to the same audio: PyAV's own resampler converting every frame to packed float at the
    file's rate (``(channels, frames)``, rate), then our mean over channels is the caller's."""
    import av

    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        rs = av.AudioResampler(format="flt", layout=st.codec_context.layout.name, rate=st.codec_context.sample_rate)
        parts = []
        for f in c.decode(st):
            for g in rs.resample(f):
                parts.append(g.to_ndarray().reshape(-1, st.codec_context.layout.nb_channels).T)
        for g in rs.resample(None):
            parts.append(g.to_ndarray().reshape(-1, st.codec_context.layout.nb_channels).T)
        return np.concatenate(parts, axis=1), st.codec_context.sample_rate
