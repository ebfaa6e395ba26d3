"""Waveform-in export: the convolution front end equals LogMel, and the torch.export / ONNX Runtime graphs (front end
inside) give the numbers of the PyTorch pipeline ``Classifier.embed(log_mel(wave))`` / ``Classifier(log_mel(wave))``
on fresh random audio and on decoded files; out-of-range input fails loudly; the numpy-only docs script runs with
torch unimportable.

Stated bounds (fp32, measured on fresh draws while writing these tests):
* front end: per log-mel value, DFTLogMel's error against a float64 LogMel is within the float32 error model of a
  length-N DFT (:func:`fp32_logmel_bound`: each DFT coefficient off by up to ``c * eps * sqrt(N * E)``, E the
  windowed frame's energy, carried through power, mel bank and log; c = 4). Measured over 90 fresh draws: worst
  0.74 of the c = 1 bound (LogMel's own FFT: 0.31); a basis scaled by 1 + 1e-4 exceeds the c = 4 bound 10x. (The
  earlier bound, 2x LogMel's own error + 1e-5, failed on a fresh draw: 9.7e-5 vs 6.8e-5, both errors near the
  log floor, where the DFT's and the FFT's rounding differ by chance);
* graphs: max |graph - pipeline| <= 1e-4 * max(1, max |pipeline|). The front end's ~1e-4 log-mel differences are
  damped by the encoder; measured worst 1e-6 relative (embeddings ~3, frames ~3, freq_stats logits ~50).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from maskspec_fast import Classifier, ModelConfig
from maskspec_fast.export import export_onnx, export_program, waveform_limits
from maskspec_fast.frontend import LogMel, load_audio, log_mel
from maskspec_fast.frontend.dft_logmel import DFTLogMel

ROOT = Path(__file__).resolve().parents[1]
GRID_T = 8  # 128 frames: 9921 .. 45760 samples (0.31 .. 1.43 s)
RTOL = 1e-4
TOO_LONG = (1.01, 2, 100)  # x max_samples: the guard used to fire only within one spare column (~5k samples)


def make_clf(pool: str = "mean") -> Classifier:
    clf = Classifier(ModelConfig.from_preset("tiny", depth=2, frames=GRID_T * 16, pool=pool), num_classes=5).eval()
    torch.nn.init.normal_(clf.head.weight, std=0.5)  # logits of order 10, not MAE's near-zero head init
    return clf


def recording(n: int, sr: int, seed: int) -> np.ndarray:
    """A recording-like mono signal: a harmonic tone with vibrato, a chirp, noise bursts, digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = rng.uniform(110, 440)
    tone = sum(np.sin(2 * np.pi * f0 * h * t + 3 * np.sin(2 * np.pi * 5 * t)) / h for h in range(1, 8))
    chirp = np.sin(2 * np.pi * (200 * t + 2000 * t**2))
    bursts = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.5 * t) > 0.7)
    x = 0.3 * tone * np.exp(-2 * (t % 1.0)) + 0.2 * chirp + 0.1 * bursts
    x[n // 3 : n // 3 + sr // 10] = 0.0  # 100 ms of digital silence
    return (x / np.abs(x).max() * 0.8).astype(np.float32)


def reference_f64(wave: torch.Tensor) -> torch.Tensor:
    """LogMel in float64 (its own buffers and recipe), the oracle for both float32 front ends."""
    ref = LogMel()
    s = ref.settings
    w = wave.double()
    x = w[:, 1:] - s.preemphasis * w[:, :-1]  # pre-emphasis in float64
    spec = torch.stft(x, s.n_fft, s.hop_length, s.win_length, ref.window.double(), center=True, pad_mode="reflect",
                      return_complex=True)
    mel = ref.mel_bank.double() @ (spec.real.square() + spec.imag.square())
    return (torch.log(mel + s.log_offset) + s.shift) / s.scale


def fp32_logmel_bound(wave: torch.Tensor, c: float = 4.0) -> torch.Tensor:
    """Per-value bound ``(B, M, T)`` on a float32 DFT log-mel's error: a float32 length-N DFT coefficient is off
    by at most ``d = c * eps * sqrt(N * E_t)`` (E_t: the windowed frame's energy, by Parseval from the float64
    spectrum), so a bin's power by ``2 |X_k| d + d^2``, a mel value by the bank's weighted sum of those, and the
    log-mel by that over ``(mel + offset) * scale``, plus the float32 rounding of the log itself."""
    eps = float(torch.finfo(torch.float32).eps)
    ref = LogMel()
    s = ref.settings
    w = wave.double()
    x = w[:, 1:] - s.preemphasis * w[:, :-1]  # pre-emphasis in float64
    mag = torch.stft(x, s.n_fft, s.hop_length, s.win_length, ref.window.double(), center=True, pad_mode="reflect",
                     return_complex=True).abs()  # (B, K, T), K = N/2 + 1
    power = mag.square()
    twice = torch.full((mag.shape[1], 1), 2.0, dtype=torch.float64)
    twice[0] = twice[-1] = 1.0  # DC and Nyquist occur once in the full spectrum
    energy = (power * twice).sum(1, keepdim=True) / s.n_fft  # (B, 1, T)
    d = c * eps * (s.n_fft * energy).sqrt()
    bank = ref.mel_bank.double()
    mel = bank @ power
    out = (torch.log(mel + s.log_offset) + s.shift) / s.scale
    return (bank @ (2 * mag * d + d.square())) / ((mel + s.log_offset) * s.scale) + 4 * eps * out.abs() + 1e-7


@pytest.mark.parametrize("n", [5121, 9921 + int(torch.randint(0, 320, ())), 32000 * 3 + 17])
@pytest.mark.parametrize("kind", ["noise", "recording", "quiet"])
def test_dft_front_end_matches_logmel(n, kind):
    wave = {"noise": torch.randn(3, n) * torch.rand(3, 1) * 2,
            "recording": torch.from_numpy(np.stack([recording(n, 32000, int(torch.randint(0, 2**31, ())))] * 2)),
            "quiet": torch.randn(2, n) * 1e-4}[kind]
    fast, ref, exact = DFTLogMel()(wave), LogMel().eval()(wave), reference_f64(wave)
    assert fast.shape == ref.shape == exact.shape
    bound = fp32_logmel_bound(wave)
    for name, got in (("DFTLogMel", fast), ("LogMel", ref)):
        excess = ((got.double() - exact).abs() / bound).max().item()
        assert excess <= 1.0, f"{name}: error {excess:.2f}x the float32 bound"


def test_dft_front_end_reads_only_the_bins_the_mel_bank_uses():
    f = DFTLogMel()
    assert f.basis.shape == (2 * f.num_bins, 1, f.settings.win_length) and f.num_bins < f.settings.n_fft // 2 + 1


def _pipeline(clf: Classifier, wave: torch.Tensor, output: str) -> np.ndarray:
    with torch.no_grad():
        spec = log_mel(wave)
        out = {"embedding": clf.embed, "frames": clf.embed_frames, "logits": clf}[output](spec)
    return out.numpy()


def _close(out: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    diff, scale = float(np.abs(out - ref).max()), max(1.0, float(np.abs(ref).max()))
    assert diff <= RTOL * scale, (what, diff, scale)


def _waves(lo: int, hi: int) -> list[torch.Tensor]:
    """Fresh random batches at both ends of the range and between, and a decoded recording (below)."""
    lengths = [lo, hi] + torch.randint(lo, hi + 1, (2,)).tolist()
    return [torch.randn(int(torch.randint(1, 4, ())), n) * 0.5 for n in lengths]


def test_torch_export_waveform_program_matches_pipeline():
    clf = make_clf()
    lo, hi = waveform_limits(clf.config)
    prog = export_program(clf, "embedding", "waveform").module()
    for w in _waves(lo, hi):
        with torch.no_grad():
            _close(prog(w).numpy(), _pipeline(clf, w, "embedding"), f"export {tuple(w.shape)}")
    for n in (hi + 1, *(int(f * hi) for f in TOO_LONG)):
        with pytest.raises((AssertionError, RuntimeError), match=f"(?i)guard failed.*<= {hi}"):
            prog(torch.zeros(1, n))


@pytest.fixture(scope="module")
def decoded(tmp_path_factory) -> torch.Tensor:
    """A 44.1 kHz stereo 16-bit FLAC file, decoded and resampled to 32 kHz mono by the data path."""
    path = tmp_path_factory.mktemp("audio") / "clip.flac"
    import soundfile as sf

    left = recording(44100 * 2, 44100, 1)
    sf.write(path, np.stack([left, 0.5 * left[::-1]], axis=1), 44100, subtype="PCM_16")
    return load_audio(path)


@pytest.mark.parametrize("output, pool", [("embedding", "mean"), ("frames", "mean"), ("logits", "freq_stats")])
def test_onnx_waveform_graph_matches_pipeline(tmp_path, decoded, output, pool):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    clf = make_clf(pool)
    lo, hi = waveform_limits(clf.config)
    sess = ort.InferenceSession(export_onnx(clf, tmp_path / "w.onnx", output, input="waveform"),
                                providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["wave"] and [o.name for o in sess.get_outputs()] == [output]
    assert all(isinstance(d, str) for d in sess.get_inputs()[0].shape)  # batch and length dynamic
    meta = sess.get_modelmeta().custom_metadata_map
    assert (int(meta["min_samples"]), int(meta["max_samples"]), meta["maskspec_output"]) == (lo, hi, output)
    for w in _waves(lo, hi) + [decoded[:hi].unsqueeze(0), decoded[-lo - 100 :].unsqueeze(0)]:
        out = sess.run(None, {"wave": w.numpy()})[0]
        assert out.dtype == np.float32
        _close(out, _pipeline(clf, w, output), f"onnx {output} {tuple(w.shape)}")


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory) -> tuple[Classifier, Path]:
    """``python -m maskspec_fast.export DIR OUT.onnx --input waveform --output embedding`` on a saved model."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("cli")
    clf = make_clf()
    clf.save_pretrained(d / "model")
    out = d / "emb.onnx"
    r = subprocess.run([sys.executable, "-m", "maskspec_fast.export", str(d / "model"), str(out), "--input",
                        "waveform", "--output", "embedding"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return clf, out


def test_onnx_waveform_out_of_range_fails_loudly_and_nan_stays_in_its_row(cli_export):
    import onnxruntime as ort

    clf, path = cli_export
    lo, hi = waveform_limits(clf.config)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (hi + 1, *(int(f * hi) for f in TOO_LONG)):  # the named guard node fails, whatever the excess
        with pytest.raises(Exception, match=f"at_most_{hi}_samples"):
            sess.run(None, {"wave": np.zeros((1, n), np.float32)})
    with pytest.raises(Exception, match="(?i)division by zero|invalid|dimension"):  # under one patch column
        sess.run(None, {"wave": np.zeros((1, 4000), np.float32)})  # 13 frames
    w = np.random.default_rng().standard_normal((3, lo + 1000)).astype(np.float32)
    w[1, 123] = np.nan
    out = sess.run(None, {"wave": w})[0]
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()  # a NaN clip is visibly NaN, alone
    _close(out[[0, 2]], _pipeline(clf, torch.from_numpy(w[[0, 2]]), "embedding"), "rows beside a NaN row")


def test_onnx_waveform_guard_precedes_every_node_that_reads_weights_or_samples(cli_export):
    """Before the length guard only shape arithmetic may run (Shape, Range, integer math, Concat of shapes): every
    node that reads a weight or the samples (the positional table's Gather did not, and failed first for inputs
    2x too long) depends on the guard's output, so ONNX Runtime cannot schedule it earlier."""
    import onnx

    g = onnx.load(str(cli_export[1])).graph
    guard = next(n for n in g.node if n.name.startswith("input_wave_must_have_at_most_"))
    after = set(guard.output)
    unguarded = []
    for n in g.node:  # in topological order
        if any(i in after for i in n.input):
            after.update(n.output)
        elif n is not guard and n.op_type in ("Gather", "GatherElements", "Expand", "Conv", "MatMul", "Pad"):
            unguarded.append(f"{n.op_type} {n.name}")
    assert unguarded == []


# the docs script must run where torch cannot be imported (a runtime-only machine)
NO_TORCH = textwrap.dedent(
    """
    import runpy, sys
    for name in ("torch", "maskspec_fast"):
        sys.modules[name] = None  # import fails
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)


def _docs_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "docs" / "onnx_embed.py"), *args],
                          capture_output=True, text=True, timeout=300)


def test_docs_script_embeds_a_long_stereo_wav_without_torch(cli_export, tmp_path):
    import soundfile as sf

    clf, model = cli_export
    lo, hi = waveform_limits(clf.config)
    n = int(2.3 * hi)  # windows at 0, hi/2, hi and n - hi (every half window, the last aligned to the end)
    left = recording(n, 32000, int(torch.randint(0, 2**31, ())))
    stereo = np.stack([left, 0.25 * np.roll(left, 999)], axis=1)
    sf.write(tmp_path / "long.wav", stereo, 32000, subtype="FLOAT")
    r = _docs_script(str(model), str(tmp_path / "long.wav"), "--out", str(tmp_path / "emb.npy"))
    assert r.returncode == 0, r.stderr[-2000:]
    mono = torch.from_numpy(stereo.mean(axis=1, dtype=np.float32))
    starts = [0, hi // 2, 2 * (hi // 2), n - hi]
    ref = np.mean([_pipeline(clf, mono[s : s + hi].unsqueeze(0), "embedding")[0] for s in starts], axis=0)
    _close(np.load(tmp_path / "emb.npy"), ref, "docs script")


def test_docs_script_refuses_bad_files(cli_export, tmp_path):
    import soundfile as sf

    _, model = cli_export
    sf.write(tmp_path / "rate.wav", recording(48000, 48000, 0), 48000)
    r = _docs_script(str(model), str(tmp_path / "rate.wav"))
    assert r.returncode == 2 and "sample rate 48000 Hz, the model takes 32000 Hz" in r.stderr
    bad = recording(32000, 32000, 0)
    bad[100] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 32000, subtype="FLOAT")
    r = _docs_script(str(model), str(tmp_path / "nan.wav"))
    assert r.returncode == 2 and "1 NaN/Inf samples" in r.stderr


def test_docs_script_refuses_unreadable_files_in_one_line(cli_export, tmp_path):
    """A 0-byte or corrupt audio file, and a 0-byte or corrupt model, are one error line (exit 2), no traceback."""
    _, model = cli_export
    good_wav = tmp_path / "ok.wav"
    import soundfile as sf

    sf.write(good_wav, recording(32000, 32000, 0), 32000)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage" * 50)
    cases = [(model, tmp_path / "empty.wav", "cannot be read as audio"),
             (model, tmp_path / "junk.wav", "cannot be read as audio"),
             (tmp_path / "empty.onnx", good_wav, "not a readable ONNX model"),
             (tmp_path / "junk.onnx", good_wav, "not a readable ONNX model")]
    for onnx_file, audio, want in cases:
        r = _docs_script(str(onnx_file), str(audio))
        bad = audio if "audio" in want else onnx_file
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert lines[0].startswith(f"error: {bad}: {want} ("), lines
