"""Embed an audio file with a waveform-in ONNX export of a MaskSpec model: onnxruntime, numpy and soundfile only.

    python -m maskspec_fast.export runs/esc50/final model.onnx --input waveform --output embedding
    python docs/onnx_embed.py model.onnx clip.wav [--out emb.npy]

The graph holds the whole front end, so this script only decodes, checks and windows the audio:
  * channels are averaged (stereo -> mono), as the training data path does;
  * the file must be at the model's rate (the graph's metadata ``sample_rate``, 32000): other rates are refused
    (resample first, e.g. ``ffmpeg -i in.wav -ar 32000 out.wav``; numpy alone has no good resampler);
  * NaN / Inf samples, empty files and unreadable ones (0 bytes, corrupt; the model file too) are refused in one line;
  * clips shorter than ``min_samples`` are zero-padded to it (documented behaviour of the export);
  * clips longer than ``max_samples`` are cut into windows: for ``embedding`` / ``logits`` windows of
    ``max_samples`` every half window, the last aligned to the end, and the outputs averaged; for ``frames``
    consecutive windows of whole patch columns (``max_frames * hop_length`` samples), frames concatenated.
Prints the output's shape and writes it with ``--out`` (``.npy``).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def windows(n: int, size: int, hop: int) -> list[int]:
    """Start samples of windows of ``size`` every ``hop`` covering ``n`` samples, the last aligned to the end."""
    if n <= size:
        return [0]
    starts = list(range(0, n - size + 1, hop))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def embed_file(model_path: str, audio_path: str) -> np.ndarray:
    """``embedding``/``logits``: ``(D,)``; ``frames``: ``(T', D)``, one row per 160 ms."""
    import onnxruntime as ort
    import soundfile as sf

    try:  # a 0-byte, truncated or foreign file: onnxruntime's and libsndfile's own errors, as one line
        sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidProtobuf, NoSuchFile, ...)
        raise ValueError(f"{model_path}: not a readable ONNX model ({_first_line(e)})") from e
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("maskspec_input") != "waveform":
        raise ValueError(f"{model_path}: not a waveform-in export (export it with --input waveform)")
    rate, lo, hi = int(meta["sample_rate"]), int(meta["min_samples"]), int(meta["max_samples"])
    try:
        audio, sr = sf.read(audio_path, dtype="float32", always_2d=True)  # (N, channels)
    except (RuntimeError, OSError, TypeError) as e:  # soundfile.LibsndfileError is a RuntimeError
        raise ValueError(f"{audio_path}: cannot be read as audio ({_first_line(e)})") from e
    if sr != rate:
        raise ValueError(f"{audio_path}: sample rate {sr} Hz, the model takes {rate} Hz: resample the file first")
    wave = audio.mean(axis=1)  # (N,) mono
    if wave.size == 0:
        raise ValueError(f"{audio_path}: empty audio (0 samples)")
    if not np.isfinite(wave).all():
        raise ValueError(f"{audio_path}: {int((~np.isfinite(wave)).sum())} NaN/Inf samples")
    if wave.size < lo:
        wave = np.pad(wave, (0, lo - wave.size))
    name = sess.get_inputs()[0].name
    run = lambda x: sess.run(None, {name: x[None].astype(np.float32)})[0][0]  # noqa: E731
    if meta["maskspec_output"] == "frames":
        step = int(meta["max_frames"]) // int(meta["patch_frames"]) * int(meta["patch_frames"]) * int(meta["hop_length"])
        parts = [wave[s : s + step] for s in range(0, wave.size, step)]
        if len(parts) > 1 and parts[-1].size < lo:  # a too-short tail: pad it, then keep only its own frames
            n_tail = (1 + (parts[-1].size - 1) // int(meta["hop_length"])) // int(meta["patch_frames"])
            return np.concatenate([run(p) for p in parts[:-1]] + [run(np.pad(parts[-1], (0, lo - parts[-1].size)))[:n_tail]])
        return np.concatenate([run(p) for p in parts])
    return np.mean([run(wave[s : s + hi]) for s in windows(wave.size, hi, hi // 2)], axis=0)


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:200] + "...") if len(text) > 200 else text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a waveform-in .onnx file from python -m maskspec_fast.export")
    p.add_argument("audio", help="an audio file soundfile reads (wav, flac, ogg, mp3)")
    p.add_argument("--out", help="write the output here (.npy)")
    a = p.parse_args(argv)
    try:
        out = embed_file(a.model, a.audio)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{a.audio}: {out.shape} {out.dtype}")
    if a.out:
        np.save(a.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
