"""DALI front end (CPU backend) against the reference: LogMel on the same waveforms, load_audio's resampler,
crop/pad, sharding, ordering, partial batches and bad files. Skipped cleanly when DALI is not installed."""
import importlib

import numpy as np
import pytest
import torch

from maskspec_fast.frontend.logmel import SAMPLE_RATE, LogMel, mel_scale, num_frames

pytest.importorskip("nvidia.dali")
sf = pytest.importorskip("soundfile")

from maskspec_fast.data.dali_loader import DaliAudioLoader  # noqa: E402
from maskspec_fast.data.order import rank_share  # noqa: E402
from maskspec_fast.frontend.audio import AudioFileError  # noqa: E402
from maskspec_fast.frontend.dali import dali_available, resampling_kernel  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# Same waveform at 32 kHz: both paths run the STFT in fp32 (pocketfft in torch, DALI's own FFT), so the power
# spectra differ by rounding (~1e-7 relative); after log(x + 1e-5) / 5 that is <= ~1e-4 where the power is
# near the 1e-5 floor. 1e-3 leaves room for a 10 s clip's larger sums and catches any real recipe difference
# (a wrong window, pre-emphasis border or bank moves values by >= 1e-2).
ATOL_SAME_WAVE = 1e-3


def _ref(wave: np.ndarray, clip_samples: int) -> torch.Tensor:
    """Reference: zero-pad/crop at the end (evaluation convention), then LogMel -> (128, T)."""
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))[:clip_samples]
    x = torch.nn.functional.pad(x, (0, clip_samples - x.shape[0]))
    return LogMel()(x)[0]


def _write(path, data, sr, subtype="FLOAT", **kw):
    sf.write(str(path), data, sr, subtype=subtype, **kw)
    return str(path)


def _only(loader) -> dict:
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches


def test_import_guard_and_availability():
    ok, reason = dali_available()
    assert ok and "dali" in reason.lower()
    assert importlib.import_module("maskspec_fast.frontend.dali") is not None


@pytest.mark.parametrize("kind", ["noise", "tones"])
def test_logmel_matches_reference_same_rate(tmp_path, kind):
    """wav at 32 kHz (fp32 samples, exact): 3 s and a real-length 10 s clip, batch of 2 (+ last partial)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    items, waves = [], []
    for i, seconds in enumerate([10.0, 3.0, 7.3]):
        n = int(seconds * SAMPLE_RATE)
        if kind == "noise":
            x = rng.standard_normal(n) * rng.uniform(0.01, 0.5)
        else:
            t = np.arange(n) / SAMPLE_RATE
            f = rng.uniform(50, 14000, size=3)
            x = sum(0.2 * np.sin(2 * np.pi * fk * t + rng.uniform(0, 6)) for fk in f)
        x = x.astype(np.float32)
        waves.append(x)
        items.append((_write(tmp_path / f"{kind}{i}.wav", x, SAMPLE_RATE), i))
    loader = DaliAudioLoader(items, batch_size=2, clip_seconds=10.0, train=False)
    batches = _only(loader)
    assert [b["spec"].shape[0] for b in batches] == [2, 1]
    for b in batches:
        assert b["spec"].shape[1:] == (128, num_frames(10 * SAMPLE_RATE)) and b["spec"].dtype == torch.float32
        for spec, idx, lab in zip(b["spec"], b["index"].tolist(), b["label"].tolist(), strict=True):
            assert lab == items[idx][1]
            ref = _ref(waves[idx], 10 * SAMPLE_RATE)  # the 3 s and 7.3 s clips are zero-padded
            err = (spec - ref).abs().max().item()
            assert err <= ATOL_SAME_WAVE, f"clip {idx}: max |dali - ref| = {err}"


def test_formats_and_stereo(tmp_path):
    """flac (int16), ogg/vorbis (lossy: compared against soundfile's decode of the same file), stereo down-mix."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    n = 2 * SAMPLE_RATE
    stereo = (rng.standard_normal((n, 2)) * [0.1, 0.3]).astype(np.float32)
    paths = [
        _write(tmp_path / "s.wav", stereo, SAMPLE_RATE),
        _write(tmp_path / "m.flac", stereo[:, 0], SAMPLE_RATE, subtype="PCM_16"),
        _write(tmp_path / "m.ogg", stereo[:, 1], SAMPLE_RATE, subtype="VORBIS"),
    ]
    loader = DaliAudioLoader([(p, 0) for p in paths], batch_size=3, clip_seconds=2.0)
    (batch,) = _only(loader)
    for spec, idx in zip(batch["spec"], batch["index"].tolist(), strict=True):
        data, _ = sf.read(paths[idx], dtype="float32", always_2d=True)
        ref = _ref(data.mean(axis=1), n)
        err = (spec - ref).abs().max().item()
        assert err <= ATOL_SAME_WAVE, f"{paths[idx]}: {err}"


def _centers_hz() -> torch.Tensor:
    m = torch.linspace(0, float(mel_scale(15000.0)), 130, dtype=torch.float64)[1:-1]
    return 700 * torch.expm1(m / 1127)


@pytest.mark.parametrize("sr", [16000, 22050, 44100, 48000])
def test_resampling_matches_reference_resampler(tmp_path, sr):
    """Other rates vs load_audio (polyphase, the reference) + LogMel. Both chains use the same band-limiting
    filter, but DALI interpolates with a 16-lobe Hann sinc, so: mel bins in the transition band around the source
    Nyquist (within 12 %) and the first/last 3 frames (different edge handling) are left out of the max; the
    signal carries a -40 dB noise floor so no bin sits at the 1e-5 numerical floor. Measured over 6 seeds:
    max 0.009 (up-sampling), 0.015-0.03 (44.1/48 kHz: DALI's interpolation noise, about -60 dB under the
    tones, lands in the narrow low mel bins that hold only the -40 dB noise), mean <= 0.008 (all bins, the
    transition band included). Bounds: max 0.05 (log-mel units, 25 % in power), mean 0.01. Without the
    anti-alias filter the 0.45 sr tone folds into 8-15 kHz and the max error exceeds 0.5."""
    audio = pytest.importorskip("maskspec_fast.frontend.audio")
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    t = np.arange(int(2.5 * sr)) / sr
    x = 0.01 * rng.standard_normal(t.size)
    for f in (300.0, 2500.0, 0.3 * sr, 0.45 * sr):  # 0.45 sr: above 16 kHz for 44.1/48 kHz -> must not alias
        x = x + 0.2 * np.sin(2 * np.pi * f * t)
    path = _write(tmp_path / f"r{sr}.wav", x.astype(np.float32), sr)
    (batch,) = _only(DaliAudioLoader([(path, 0)], batch_size=1, clip_seconds=2.5))
    ref = _ref(audio.load_audio(path).numpy(), int(2.5 * SAMPLE_RATE))
    spec = batch["spec"][0]
    nyq = min(sr, SAMPLE_RATE) / 2
    centers = _centers_hz()
    keep = (centers < 0.88 * nyq) | (centers > 1.12 * nyq)
    err = (spec - ref).abs()[keep][:, 3:-3]
    assert err.max().item() <= 0.05, f"max err {err.max().item()} at {sr} Hz"
    assert (spec - ref).abs()[:, 3:-3].mean().item() <= 0.01


def test_resampling_kernel_is_reference_filter():
    k = resampling_kernel(48000, 48000, 32000)
    assert k.shape[0] == 1 and k.shape[1] % 2 == 1 and abs(k.sum() - 1) < 1e-5
    assert resampling_kernel(32000, 32000, 32000).tolist() == [[1.0]]
    # frequency response: flat at 1 kHz, >= 80 dB down at 17 kHz (folds to 15 kHz at 32 kHz)
    n = np.arange(k.shape[1]) - k.shape[1] // 2
    resp = lambda f: abs(np.sum(k[0] * np.exp(-2j * np.pi * f / 48000 * n)))  # noqa: E731
    assert abs(resp(1000.0) - 1) < 1e-4 and resp(17000.0) < 1e-4


def test_short_clip_padded_and_train_crop_in_range(tmp_path):
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    clip, room = int(1.5 * SAMPLE_RATE), 40
    short = rng.standard_normal(SAMPLE_RATE // 2).astype(np.float32) * 0.1  # 0.5 s into a 1.5 s clip
    long = rng.standard_normal(clip + room).astype(np.float32) * 0.1  # 41 possible crop starts
    items = [(_write(tmp_path / "short.wav", short, SAMPLE_RATE), 0), (_write(tmp_path / "long.wav", long, SAMPLE_RATE), 1)]
    (batch,) = _only(DaliAudioLoader(items, batch_size=2, clip_seconds=1.5))
    for spec, idx in zip(batch["spec"], batch["index"].tolist(), strict=True):  # evaluation: start 0, zero-pad at the end
        assert (spec - _ref([short, long][idx], clip)).abs().max().item() <= ATOL_SAME_WAVE
    # training: the long clip is a window [s, s + clip) with s in 0..room; exactly one s reproduces it
    windows = torch.stack([torch.from_numpy(long[s : s + clip]) for s in range(room + 1)])
    refs = LogMel()(windows)  # (room + 1, 128, T)
    starts = set()
    for seed in range(4):
        (batch,) = _only(DaliAudioLoader(items, batch_size=2, clip_seconds=1.5, train=True, seed=seed))
        for spec, idx in zip(batch["spec"], batch["index"].tolist(), strict=True):
            if idx == 0:
                assert (spec - _ref(short, clip)).abs().max().item() <= ATOL_SAME_WAVE
                continue
            err = (refs - spec).abs().amax(dim=(1, 2))
            assert err.min().item() <= ATOL_SAME_WAVE, f"no crop start reproduces the clip: {err.min().item()}"
            starts.add(int(err.argmin()))
    assert len(starts) > 1  # the start is random (4 seeds, 41 starts: all equal with prob 41**-3)


def _dataset(tmp_path, n, seconds=0.5):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        x = (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32)
        items.append((_write(tmp_path / f"c{i:03d}.wav", x, SAMPLE_RATE), 100 + i))
    return items


def test_shards_cover_dataset_once_and_order_is_seeded(tmp_path):
    items = _dataset(tmp_path, 11)
    seen = []
    for shard in range(2):
        loader = DaliAudioLoader(items, batch_size=4, clip_seconds=0.5, train=True, seed=7, shard_id=shard, num_shards=2)
        assert len(loader) == -(-len(rank_share(range(11), shard, 2, pad=False)) // 4)
        batches = _only(loader)
        idx = torch.cat([b["index"] for b in batches]).tolist()
        labels = torch.cat([b["label"] for b in batches]).tolist()
        assert labels == [items[i][1] for i in idx]  # labels travel with their audio
        assert idx == loader.shard_indices(0).tolist()
        seen += idx
    assert sorted(seen) == list(range(11))
    # same (seed, epoch) -> same order and same crops; next epoch / other seed -> another order
    a = DaliAudioLoader(items, batch_size=4, clip_seconds=0.25, train=True, seed=7)
    b = DaliAudioLoader(items, batch_size=4, clip_seconds=0.25, train=True, seed=7)
    ea, eb = list(a), list(b)
    assert all(torch.equal(x["index"], y["index"]) and torch.equal(x["spec"], y["spec"]) for x, y in zip(ea, eb, strict=True))
    assert a.epoch == 1
    e1 = torch.cat([x["index"] for x in a])
    assert e1.tolist() != torch.cat([x["index"] for x in ea]).tolist() and sorted(e1.tolist()) == list(range(11))
    c = DaliAudioLoader(items, batch_size=4, clip_seconds=0.25, train=True, seed=8)
    assert torch.cat([x["index"] for x in c]).tolist() != torch.cat([x["index"] for x in ea]).tolist()
    a.set_epoch(0)
    assert all(torch.equal(x["spec"], y["spec"]) for x, y in zip(a, ea, strict=True))


@pytest.mark.parametrize("drop_last", [False, True])
def test_last_partial_batch(tmp_path, drop_last):
    items = _dataset(tmp_path, 7)
    loader = DaliAudioLoader(items, batch_size=3, clip_seconds=0.5, drop_last=drop_last)
    sizes = [b["spec"].shape[0] for b in _only(loader)]
    assert sizes == ([3, 3] if drop_last else [3, 3, 1])
    idx = torch.cat([b["index"] for b in loader]).tolist()
    assert idx == list(range(6 if drop_last else 7))  # no padding duplicates


def test_corrupt_file_raises_or_is_skipped(tmp_path):
    items = _dataset(tmp_path, 5)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really a wave file" * 4)
    items.insert(2, (str(bad), 999))
    for validate in (True, False):  # up-front header check, or the failure surfacing inside DALI
        with pytest.raises(AudioFileError, match="broken.wav") as info:
            list(DaliAudioLoader(items, batch_size=2, clip_seconds=0.5, validate=validate))
        assert info.value.paths == [str(bad)]
        loader = DaliAudioLoader(items, batch_size=2, clip_seconds=0.5, skip_bad_files=True, validate=validate)
        batches = _only(loader)
        idx = torch.cat([b["index"] for b in batches]).tolist()
        labels = torch.cat([b["label"] for b in batches]).tolist()
        assert len(idx) == 6 and 2 not in idx and 999 not in labels  # replaced by a good file, size kept
        assert labels == [items[i][1] for i in idx]
        assert [p for p, _ in loader.skipped] == [str(bad)]


def test_mp3_is_routed_through_python_decoder(tmp_path):
    """DALI's decoder has no mp3; such files go through soundfile (transcoded to WAV in memory)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))
    x = (rng.standard_normal(SAMPLE_RATE) * 0.1).astype(np.float32)
    try:
        mp3 = _write(tmp_path / "a.mp3", x, SAMPLE_RATE, subtype="MPEG_LAYER_III", format="MP3")
    except Exception as exc:  # libsndfile without mp3 support
        pytest.skip(f"soundfile cannot write mp3 here: {exc}")
    wav = _write(tmp_path / "b.wav", x, SAMPLE_RATE)
    (batch,) = _only(DaliAudioLoader([(mp3, 0), (wav, 1)], batch_size=2, clip_seconds=1.0))
    decoded, rate = sf.read(mp3, dtype="float32")
    assert rate == SAMPLE_RATE
    assert (batch["spec"][0] - _ref(decoded, SAMPLE_RATE)).abs().max().item() <= ATOL_SAME_WAVE
    assert (batch["spec"][1] - _ref(x, SAMPLE_RATE)).abs().max().item() <= ATOL_SAME_WAVE


def test_ffmpeg_containers_are_routed_through_python_decoder(tmp_path):
    """m4a and mp4 (AAC beside a video track): transcoded by FFmpeg (PyAV) in memory, the same log-mel as the
    reference path's load_audio (mono at the file's rate, then DALI's resampler = the reference filter)."""
    pytest.importorskip("av")
    from audio_sets import encode_av, tonal

    from maskspec_fast.frontend.audio import load_audio

    m4a, mp4 = str(tmp_path / "a.m4a"), str(tmp_path / "b.mp4")
    encode_av(m4a, tonal(1.2, SAMPLE_RATE, 2, seed=1), SAMPLE_RATE, "m4a")
    encode_av(mp4, tonal(1.2, SAMPLE_RATE, 2, seed=2), SAMPLE_RATE, "mp4")
    (batch,) = _only(DaliAudioLoader([(m4a, 0), (mp4, 1)], batch_size=2, clip_seconds=1.0))
    for row, path in enumerate([m4a, mp4]):
        ref = _ref(load_audio(path).numpy()[:SAMPLE_RATE], SAMPLE_RATE)
        assert (batch["spec"][row] - ref).abs().max().item() <= ATOL_SAME_WAVE


def test_multilabel_vectors(tmp_path):
    items = _dataset(tmp_path, 3)
    items = [(p, np.eye(4, dtype=np.float32)[i]) for i, (p, _) in enumerate(items)]
    (batch,) = _only(DaliAudioLoader(items, batch_size=3, clip_seconds=0.5))
    assert batch["label"].dtype == torch.float32 and batch["label"].shape == (3, 4)
    assert torch.equal(batch["label"], torch.eye(4)[batch["index"]])
    # lists of class indices (the maskspec_fast.data convention) -> multi-hot with num_classes
    items = [(p, [i, 3]) for i, (p, _) in enumerate(items)]
    (batch,) = _only(DaliAudioLoader(items, batch_size=3, clip_seconds=0.5, num_classes=5))
    want = torch.zeros(3, 5)
    for row, i in enumerate(batch["index"].tolist()):
        want[row, [i, 3]] = 1.0
    assert torch.equal(batch["label"], want)


@pytest.mark.gpu
def test_gpu_matches_cpu(tmp_path):
    items = _dataset(tmp_path, 3, seconds=1.0)
    cpu = next(iter(DaliAudioLoader(items, batch_size=3, clip_seconds=1.0)))
    gpu = next(iter(DaliAudioLoader(items, batch_size=3, clip_seconds=1.0, device="cuda")))
    assert gpu["spec"].is_cuda
    torch.testing.assert_close(gpu["spec"].cpu(), cpu["spec"], atol=ATOL_SAME_WAVE, rtol=0)
