"""Front-end throughput: seconds of audio turned into log-mel per second of wall time, end to end from files.

Writes ``--num-files`` clips of ``--clip-seconds`` (white noise + tones, wav) to a temp dir, then times full
passes (epochs) over them with:

* ``dali-cpu``: :class:`maskspec_fast.data.dali_loader.DaliAudioLoader` on DALI's CPU backend
  (``num_threads = --workers``); ``dali-gpu`` as well when CUDA is there.
* ``torch-reference``: a ``torch.utils.data.DataLoader`` with ``--workers`` processes, each item
  ``load_audio`` + ``crop_or_pad``; the batched reference :class:`LogMel` runs in the main process per batch.
* ``kaldi-style per-clip fbank (torch)``: the AudioMAE loader style -- per clip in the workers: framing with
  snip-edges, per-frame DC removal, pre-emphasis, Hanning window, zero-pad to 1024, rfft, power, Kaldi mel bank,
  log, then AudioMAE's (x - mean) / (2 std) normalization; written here in torch because torchaudio (whose
  ``compliance.kaldi.fbank`` AudioMAE calls) is not installed beside torch 2.13.

Every pass after one warm-up pass (page cache warm, pipelines / workers started) is timed; the table shows the
median with p20/p80 of audio-seconds per wall-second, the ratio to the torch loader with the same output
(the reference front end) and to the fastest torch row of any output.
Results (with device, versions, git commit) go to ``--results-file`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import git_commit  # noqa: E402

from maskspec_fast.frontend.logmel import SAMPLE_RATE, LogMel, MelSettings, kaldi_mel_banks  # noqa: E402


def write_files(directory: str, n: int, seconds: float, sample_rate: int, seed: int = 0) -> list[tuple[str, int]]:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    items = []
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    for i in range(n):
        x = 0.05 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * rng.uniform(100, 8000) * t)
        path = os.path.join(directory, f"clip{i:05d}.wav")
        sf.write(path, x.astype(np.float32), sample_rate, subtype="PCM_16")
        items.append((path, i % 10))
    return items


class WaveDataset(torch.utils.data.Dataset):
    """Reference loader item: ``load_audio`` (decode, mono, resample) + ``crop_or_pad`` -> ``(L,)``."""

    def __init__(self, items, clip_samples: int):
        self.items, self.clip_samples = items, clip_samples

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        from maskspec_fast.frontend.audio import crop_or_pad, load_audio

        path, label = self.items[i]
        return crop_or_pad(load_audio(path), self.clip_samples), label


def kaldi_style_fbank(wave: torch.Tensor, sample_rate: int, bank: torch.Tensor, frame_length: int = 800,
                      frame_shift: int = 320, preemph: float = 0.97) -> torch.Tensor:
    """One clip ``(N,)`` -> ``(frames, 128)`` log-mel, Kaldi's recipe (snip edges, per-frame DC removal and
    pre-emphasis, Hanning window, FFT size = next power of two, power, mel, log with float-eps floor)."""
    n_fft = 1 << (frame_length - 1).bit_length()
    frames = wave.unfold(0, frame_length, frame_shift)  # (F, 800), snip_edges=True
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC per frame
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # Kaldi: x[0] - c x[0] at the frame start
    frames = frames - preemph * prev
    frames = frames * torch.hann_window(frame_length, periodic=False)
    power = torch.fft.rfft(frames, n=n_fft).abs().square()  # (F, 513)
    mel = power @ bank.T  # (F, 128)
    return torch.log(torch.clamp(mel, min=torch.finfo(torch.float32).eps))


class KaldiFbankDataset(WaveDataset):
    """AudioMAE-style item: waveform -> per-clip fbank -> (x - mean) / (2 std) (their AudioSet stats)."""

    def __init__(self, items, clip_samples: int):
        super().__init__(items, clip_samples)
        s = MelSettings()
        self.bank = kaldi_mel_banks(s.n_mels, s.n_fft, s.sample_rate, 20.0, s.sample_rate / 2)

    def __getitem__(self, i):
        wave, label = super().__getitem__(i)
        fbank = kaldi_style_fbank(wave, SAMPLE_RATE, self.bank)
        return (fbank - (-4.2677393)) / (4.5689974 * 2), label


def time_passes(make_iter, audio_seconds: float, passes: int, sync) -> list[float]:
    """Audio-seconds per wall-second for each timed pass, after one warm-up pass."""
    rates = []
    for p in range(passes + 1):
        t0 = time.perf_counter()
        n = 0
        for out in make_iter():
            n += out.shape[0]
        sync()
        dt = time.perf_counter() - t0
        if p > 0:
            rates.append(audio_seconds / dt)
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--num-files", type=int, default=48)
    ap.add_argument("--clip-seconds", type=float, default=10.0)
    ap.add_argument("--sample-rate", type=int, default=SAMPLE_RATE, help="rate of the files written (32000: no resampling)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers / DALI threads")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the files (after one warm-up pass)")
    ap.add_argument("--rows", default="dali,torch,kaldi", help="comma list of dali, torch, kaldi")
    ap.add_argument("--results-file", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    torch.set_num_threads(max(1, args.workers))
    rows = set(args.rows.split(","))
    clip_samples = int(round(args.clip_seconds * SAMPLE_RATE))
    audio_seconds = args.num_files * args.clip_seconds
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    results = []

    with tempfile.TemporaryDirectory() as tmp:
        items = write_files(tmp, args.num_files, args.clip_seconds, args.sample_rate)

        def record(name, rates, note=""):
            r = np.asarray(rates)
            row = {"name": name, "median": float(np.median(r)), "p20": float(np.percentile(r, 20)),
                   "p80": float(np.percentile(r, 80)), "passes": len(rates), "note": note}
            results.append(row)
            print(f"  {name:<40s} {row['median']:9.1f} audio-s/s  (p20 {row['p20']:.1f}, p80 {row['p80']:.1f})", flush=True)

        if "dali" in rows:
            from maskspec_fast.data.dali_loader import DaliAudioLoader
            from maskspec_fast.frontend.dali import dali_available

            ok, reason = dali_available()
            if not ok:
                print(f"  skipping DALI rows: {reason}")
            else:
                for device in ["cpu"] + (["cuda"] if cuda else []):
                    loader = DaliAudioLoader(items, args.batch_size, args.clip_seconds, train=True, seed=0,
                                             device=device, num_threads=args.workers)
                    rates = time_passes(lambda ld=loader: (b["spec"] for b in ld), audio_seconds, args.passes, sync)
                    record(f"dali-{device}", rates, f"DALI {reason.split()[-1]}, {args.workers} threads")

        dl_kw = dict(batch_size=args.batch_size, num_workers=args.workers, shuffle=True,
                     persistent_workers=args.workers > 0, drop_last=False)
        if "torch" in rows:
            device = torch.device("cuda" if cuda else "cpu")
            logmel = LogMel().to(device).eval()
            dl = torch.utils.data.DataLoader(WaveDataset(items, clip_samples), pin_memory=cuda, **dl_kw)

            def ref_iter():
                with torch.no_grad():
                    for wave, _ in dl:
                        yield logmel(wave.to(device, non_blocking=True))

            record("torch-reference (DataLoader + LogMel)", time_passes(ref_iter, audio_seconds, args.passes, sync),
                   f"{args.workers} workers, LogMel batched on {device.type}")
        if "kaldi" in rows:
            dl = torch.utils.data.DataLoader(KaldiFbankDataset(items, clip_samples), **dl_kw)
            record("kaldi-style per-clip fbank (torch)",
                   time_passes(lambda: (x for x, _ in dl), audio_seconds, args.passes, sync),
                   f"{args.workers} workers, fbank per clip in the workers")

    torch_rows = [r for r in results if not r["name"].startswith("dali")]
    best = max(torch_rows, key=lambda r: r["median"]) if torch_rows else None
    device_name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    print(f"\nfront end, {args.num_files} x {args.clip_seconds:g} s wav at {args.sample_rate} Hz, batch {args.batch_size}, "
          f"{args.workers} workers/threads, {device_name}")
    # The target compares loaders that produce the SAME log-mel: DALI vs the reference torch loader.
    # The Kaldi-style row computes different features (AudioMAE's), so it is shown for context in "vs best torch".
    same = next((r for r in results if r["name"].startswith("torch-reference")), None)
    print(f"| {'loader':<40s} | audio-s/s median | p20 | p80 | vs same-output torch | vs best torch |")
    print("|" + "-" * 42 + "|------------------|-----|-----|----------------------|---------------|")
    for r in results:
        ratio = r["median"] / best["median"] if best else float("nan")
        same_ratio = r["median"] / same["median"] if same else float("nan")
        r["vs_best_torch"], r["vs_same_output_torch"] = ratio, same_ratio
        print(f"| {r['name']:<40s} | {r['median']:16.1f} | {r['p20']:.1f} | {r['p80']:.1f} | "
              f"{same_ratio:19.2f}x | {ratio:12.2f}x |")

    if args.results_file:
        try:
            import nvidia.dali

            dali_version = nvidia.dali.__version__
        except Exception:
            dali_version = None
        payload = {"benchmark": "frontend", "args": vars(args), "device": device_name, "torch": torch.__version__,
                   "dali": dali_version, "python": platform.python_version(), "commit": git_commit(),
                   "unit": "seconds of audio per second of wall time", "results": results}
        with open(args.results_file, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"wrote {args.results_file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
