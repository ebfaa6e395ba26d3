"""Input pipeline throughput: audio seconds per second per CPU core, from each layout users hold to waveform
batches (decode -> resample -> crop to the clip length -> batch), with 1 and 2 DataLoader workers; log-mel on the
device as a separate column; and the cores each source needs to feed one GPU.

    python benchmarks/input_pipeline.py                       # default: < 3 minutes on 2 idle cores
    python benchmarks/input_pipeline.py --clips 256 --seconds 5 --repeats 5 --workers 1,2,4

Sources (built here, the way their producers build them, from the same clips):
  mp3 files        folder: of .mp3 files (libsndfile), one file per clip
  wav files        folder: of 16-bit .wav files at the source rate (libsndfile)
  flac files       folder: of .flac files at the source rate (libsndfile)
  m4a files        folder: of AAC .m4a files, 48 kHz stereo (FFmpeg through PyAV; yt-dlp's AudioSet downloads)
  mp4 files        folder: of .mp4 videos, AAC 48 kHz stereo beside an mpeg4 video track (FFmpeg; VGGSound)
  webm files       folder: of Opus .webm files, 48 kHz stereo (FFmpeg; yt-dlp's other AudioSet format)
  opus files       folder: of bare Ogg Opus .opus files, 48 kHz stereo (FFmpeg)
  mp3 files PyAV   the same files decoded by FFmpeg through PyAV (only if ``av`` imports): the decoder choice
  hdf5 mp3         hdf5: the PaSST / MaskSpec layout (mp3 bytes in an HDF5 file, decoded from memory)
  flac shards      webdataset: FLAC tar shards
  prepared shards  webdataset: the output of ``python -m maskspec_fast.data prepare`` (16-bit PCM WAV members)
  prepared flac    the same with ``--format flac``

Each row: clips from a DataLoader (map-style sets) or the streaming input (shards) for ``--seconds`` of wall time
after the first batch (worker start-up excluded), ``--repeats`` times; audio-s/s = clips x clip seconds / time,
median [min, max] over repeats; per core = divided by the worker count (the main process only waits).
Cores per GPU = the GPU's clip rate x clip seconds / (audio-s/s per core): the clip rate is the best measured
pre-training row (preset base, 992 frames) of ``benchmarks/results/*.json`` written by ``throughput.py`` on a GPU
when there is one, else the projection ``0.4 x bf16 peak / FLOPs per clip`` for an H100 (marked "projection").
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import environment, print_table, time_fn, write_json  # noqa: E402

from maskspec_fast.data import AudioFolder, build_dataset, collate  # noqa: E402
from maskspec_fast.frontend.audio import SAMPLE_RATE, AudioFileError, resample  # noqa: E402


# ------------------------------------------------------------------------------------------------ test data
def make_clips(n: int, seconds: float, rate: int, seed: int = 0) -> list[np.ndarray]:
    """Band-limited noise + tones, (rate * seconds,) float32: content that compresses like real audio, roughly."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    out = []
    for _ in range(n):
        x = sum(rng.uniform(0.05, 0.2) * np.sin(2 * np.pi * rng.uniform(80, 8000) * t + rng.uniform(0, 6))
                for _ in range(5))
        noise = np.convolve(rng.standard_normal(t.shape), np.ones(8) / 8, mode="same")
        out.append((x + 0.05 * noise).astype(np.float32))
    return out


def _encode(wave: np.ndarray, fmt: str, rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype="PCM_16" if fmt == "FLAC" else None)
    return buf.getvalue()


def build_sources(root: Path, clips: list[np.ndarray], rate: int, shard_size: int, log) -> dict[str, str]:
    """Write every layout from the same clips; returns ``{name: --data spec}``."""
    import h5py
    import webdataset as wds

    from maskspec_fast.data.prepare import prepare

    t = time.perf_counter()
    mp3s = [_encode(c, "MP3", rate) for c in clips]
    flacs = [_encode(c, "FLAC", rate) for c in clips]
    folder = root / "mp3"
    folder.mkdir()
    for i, b in enumerate(mp3s):
        (folder / f"Y{i:011d}.mp3").write_bytes(b)
    h5 = root / "audioset.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("audio_name", data=np.array([f"Y{i:011d}.mp3".encode() for i in range(len(clips))],
                                                     dtype="S20"))
        d = f.create_dataset("mp3", shape=(len(clips),), dtype=h5py.vlen_dtype(np.dtype("uint8")))
        for i, b in enumerate(mp3s):
            d[i] = np.frombuffer(b, dtype=np.uint8)
        f.create_dataset("target", data=np.packbits(np.zeros((len(clips), 527), np.uint8), axis=1))
    (root / "flac").mkdir()
    shards = -(-len(clips) // shard_size)
    for s in range(shards):
        with open(root / "flac" / f"shard-{s:06d}.tar", "wb") as fh:
            w = wds.TarWriter(fh, mtime=0)
            for i in range(s * shard_size, min(len(clips), (s + 1) * shard_size)):
                w.write({"__key__": f"Y{i:011d}", "flac": flacs[i], "json": {"labels": []}})
            w.close()
    specs = {"mp3 files": f"folder:{folder}", "mp3 files PyAV": f"folder:{folder}", "hdf5 mp3": f"hdf5:{h5}",
             "flac shards": f"webdataset:{root}/flac/shard-{{000000..{shards - 1:06d}}}.tar"}
    for fmt, blobs in (("wav", [_encode(c, "WAV", rate) for c in clips]), ("flac", flacs)):
        (root / f"{fmt}_files").mkdir()
        for i, b in enumerate(blobs):
            (root / f"{fmt}_files" / f"Y{i:011d}.{fmt}").write_bytes(b)
        specs[f"{fmt} files"] = f"folder:{root / f'{fmt}_files'}"
    specs.update(build_ffmpeg_folders(root, len(clips), len(clips[0]) / rate))
    for name, fmt in (("prepared shards", "wav"), ("prepared flac", "flac")):
        out = root / f"prepared_{fmt}"
        summary = prepare(specs["hdf5 mp3"], out, shard_size=shard_size, workers=1, fmt=fmt, progress=False,
                          log=lambda *_: None)
        specs[name] = summary["spec"]
    log(f"built {len(clips)} clips x {len(clips[0]) / rate:.1f} s in every layout ({time.perf_counter() - t:.1f} s)")
    return specs


def build_ffmpeg_folders(root: Path, n: int, seconds: float) -> dict[str, str]:
    """Folders of m4a / mp4 (+video) / webm / opus files written by FFmpeg's encoders (PyAV), 48 kHz stereo (the
    rate YouTube serves): ``{name: spec}``; {} without PyAV."""
    if not pyav_available()[0]:
        return {}
    from decoders import encode_av, make_clip

    specs = {}
    for name, fmt, codec, video, ext in (("m4a files", "ipod", "aac", False, "m4a"),
                                         ("mp4 files", "mp4", "aac", True, "mp4"),
                                         ("webm files", "webm", "libopus", False, "webm"),
                                         ("opus files", "opus", "libopus", False, "opus")):
        folder = root / ext
        folder.mkdir()
        for i in range(n):
            encode_av(str(folder / f"Y{i:011d}.{ext}"), make_clip(seconds, 48000, i), 48000, fmt, codec, video)
        specs[name] = f"folder:{folder}"
    return specs


# ------------------------------------------------------------------------------------------- PyAV decoding
def pyav_available() -> tuple[bool, str]:
    try:
        import av
    except ImportError as e:
        return False, f"PyAV not installed ({e})"
    return True, f"PyAV {av.__version__}"


class PyAVFolder(AudioFolder):
    """AudioFolder whose files FFmpeg decodes (through PyAV): the alternative decoder, measured beside libsndfile."""

    def _load(self, index: int) -> tuple[torch.Tensor, str]:
        import av

        path = self.items[index][0]
        try:
            with av.open(path) as container:
                stream = container.streams.audio[0]
                rate = stream.rate
                frames = [f.to_ndarray() for f in container.decode(stream)]  # (channels, n) float32 planar
        except Exception as e:  # FFmpeg errors
            raise AudioFileError(path, f"undecodable ({e})") from e
        x = np.concatenate(frames, axis=1)
        wave = torch.from_numpy(np.ascontiguousarray(x.mean(axis=0) if x.shape[0] > 1 else x[0], np.float32))
        return (resample(wave, rate, self.sample_rate) if rate != self.sample_rate else wave), path


# ------------------------------------------------------------------------------------------------ measuring
def _repeat_pattern(spec: str, times: int) -> str:
    """The same shards listed ``times`` times (``::``-joined): a long epoch of the streaming input."""
    from maskspec_fast.data.shards import expand_shards

    return "webdataset:" + "::".join(expand_shards(spec.split(":", 1)[1]) * times)


def _batches(name: str, spec: str, workers: int, batch: int, clip_seconds: float, seed: int):
    """An endless-enough iterator of waveform batches for one source, as training would draw them."""
    if spec.startswith("webdataset:"):
        from maskspec_fast.train.inputs import StreamInput

        src = build_dataset(_repeat_pattern(spec, 200), clip_seconds=clip_seconds, train=True, seed=seed)
        per_rank = src.batches_per_rank(batch)
        inp = StreamInput(src, None, batch, per_rank, workers=workers, seed=seed, rank=0, world_size=1,
                          device=torch.device("cpu"))
        return inp.epoch(0, 0)
    ds = (PyAVFolder(spec.split(":", 1)[1], clip_seconds=clip_seconds, train=True, seed=seed) if "PyAV" in name
          else build_dataset(spec, clip_seconds=clip_seconds, train=True, seed=seed))
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(len(ds), generator=g) for _ in range(10000 // len(ds) + 1)]).tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=order, num_workers=workers,
                                         collate_fn=collate, drop_last=True)
    return iter(loader)


def measure(name: str, spec: str, workers: int, args) -> dict:
    rates = []
    for r in range(args.repeats):
        it = _batches(name, spec, workers, args.batch_size, args.clip_seconds, seed=r)
        first = next(it)  # worker start-up and the first batch are not timed
        assert first["wave"].shape == (args.batch_size, int(round(args.clip_seconds * SAMPLE_RATE)))
        clips, t0 = 0, time.perf_counter()
        for b in it:
            clips += b["wave"].shape[0]
            if time.perf_counter() - t0 >= args.seconds:
                break
        dt = time.perf_counter() - t0
        del it
        rates.append(clips * args.clip_seconds / dt)
    med = statistics.median(rates)
    return {"source": name, "workers": workers, "audio_s_per_s": med, "min": min(rates), "max": max(rates),
            "per_core": med / workers, "clips_per_s": med / args.clip_seconds}


def logmel_rate(args, device: torch.device) -> dict:
    """Log-mel of a waveform batch on ``device`` (the training front end), audio-s/s."""
    from maskspec_fast.frontend.logmel import LogMel

    fe = LogMel().to(device)
    wave = torch.randn(args.batch_size, int(round(args.clip_seconds * SAMPLE_RATE)), device=device) * 0.1
    with torch.no_grad():
        t = time_fn(lambda: fe(wave), device, warmup=2, iters=5)
    return {"device": str(device), "audio_s_per_s": args.batch_size * args.clip_seconds / t["median_s"],
            "median_ms": 1e3 * t["median_s"]}


def gpu_clip_rate() -> tuple[float, str]:
    """Pre-training clips/s of one GPU: the best measured base/992-frame row, else the H100 projection."""
    best = None
    for f in glob.glob(str(Path(__file__).resolve().parent / "results" / "*.json")):
        try:
            d = json.loads(Path(f).read_text())
        except (ValueError, OSError):
            continue
        env, a = d.get("env", {}), d.get("args", {})
        if "CPU" in str(env.get("device", "CPU")) or a.get("preset") != "base" or a.get("frames") != 992:
            continue
        for r in d.get("rows", []):
            if r.get("mode") == "pretrain" and r.get("status") == "ok" and (best is None or r["samples_per_s"] > best[0]):
                best = (r["samples_per_s"], f"measured: {env['device']} {r['impl']} ({Path(f).name})")
    if best:
        return best
    from throughput import PEAK_FLOPS, pretrain_flops

    from maskspec_fast import ModelConfig

    per_clip = pretrain_flops(ModelConfig.from_preset("base", frames=992), 1, 0.75)
    return 0.4 * PEAK_FLOPS["H100"]["bf16"] / per_clip, "projection: H100, 40% MFU of the bf16 peak"


def run(args) -> list[dict]:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.set_num_threads(1)  # one core per worker; the main thread only collects batches
    env = environment(device)
    ok, why = pyav_available()
    env["pyav"] = why
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="maskspec_input_") as tmp:
        clips = make_clips(args.clips, args.source_seconds, args.source_rate)
        specs = build_sources(Path(tmp), clips, args.source_rate, args.shard_size, print)
        for name, spec in specs.items():
            if "PyAV" in name and not ok:
                rows.append({"source": name, "status": f"skipped: {why}"})
                continue
            for w in args.workers:
                row = measure(name, spec, w, args)
                rows.append({**row, "status": "ok"})
                print(f"{name}, {w} worker(s): {row['audio_s_per_s']:.0f} audio-s/s "
                      f"[{row['min']:.0f}, {row['max']:.0f}]", flush=True)
    mel = logmel_rate(args, device)
    rate, basis = gpu_clip_rate()
    need = rate * args.clip_seconds  # audio-s/s one GPU consumes
    base = {r["source"]: r["per_core"] for r in rows if r.get("status") == "ok" and r["workers"] == min(args.workers)}
    for r in rows:
        if r.get("status") == "ok":
            r["logmel_device_s_per_s"] = mel["audio_s_per_s"]  # the same for every source: it runs after them
            r["cores_per_gpu"] = need / r["per_core"]
            ref = base.get("mp3 files")
            r["x_mp3_files"] = r["per_core"] / ref if ref else None
    print(f"\n{env['device']}, torch {env['torch']}, commit {env['commit']}, {env['pyav']}; {args.clips} clips of "
          f"{args.source_seconds} s at {args.source_rate} Hz -> batches of {args.batch_size} x {args.clip_seconds} s "
          f"at {SAMPLE_RATE} Hz; {args.seconds} s x {args.repeats} repeats per row")
    print(f"log-mel on {mel['device']}: {mel['audio_s_per_s']:.0f} audio-s/s (batch {args.batch_size}, "
          f"{mel['median_ms']:.1f} ms)")
    print(f"one GPU consumes {rate:.0f} clips/s = {need:.0f} audio-s/s ({basis})")
    cols = [("source", "source"), ("workers", "workers"), ("audio_s_per_s", "audio-s/s"), ("min", "min"),
            ("max", "max"), ("per_core", "per core"), ("x_mp3_files", "x mp3 files"),
            ("cores_per_gpu", "cores/GPU"), ("logmel_device_s_per_s", f"log-mel {mel['device']}"),
            ("status", "status")]
    print_table(rows, cols)
    write_json(args.results_file, {"env": env, "args": vars(args), "logmel": mel,
                                   "gpu": {"clips_per_s": rate, "audio_s_per_s": need, "basis": basis},
                                   "rows": rows})
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=48, help="distinct clips written in every layout (default 48)")
    p.add_argument("--source-seconds", type=float, default=10.0, help="length of each source clip (AudioSet: 10)")
    p.add_argument("--source-rate", type=int, default=32000, help="rate of the source files (AudioSet HDF5: 32000)")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="training crop (default 10 s)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=16, help="clips per tar shard")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                   help="comma list of DataLoader worker counts (default 1,2)")
    p.add_argument("--seconds", type=float, default=2.0, help="timed wall seconds per row and repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="where the log-mel column runs")
    p.add_argument("--results-file", default="benchmarks/results/input_pipeline.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    run(parse_args())
