"""X-ARES: the encoder passes the harness's own checker and is found by its loader (xares installed --no-deps from
requirements-hear.txt); its frames are the HEAR timestamp embeddings; long input is chunked exactly; bad input is
a ValueError naming the problem."""
from __future__ import annotations

import importlib

import pytest
import torch
from precise import log_mel64
from tolerance import assert_within

from maskspec_fast import Classifier, ModelConfig
from maskspec_fast.frontend import LogMel
from maskspec_fast.inference import timestamp_embeddings_of_spec
from maskspec_fast.xares import CHECKPOINT_ENV, MaskSpecEncoder, log_mel_chunked


@pytest.fixture()
def checkpoint(tmp_path, monkeypatch):
    Classifier(ModelConfig.from_preset("tiny", depth=2, frames=256), num_classes=1).save_pretrained(tmp_path / "m")
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "m"))
    return tmp_path / "m"


def test_xares_checker_passes_and_the_loader_finds_the_one_encoder(checkpoint):
    checker = pytest.importorskip("xares.audio_encoder_checker", reason="xares not installed (requirements-hear.txt)")
    utils = importlib.import_module("xares.utils")
    cls = utils.attr_from_py_path("maskspec_fast/xares.py", endswith="Encoder")  # what xares.run does
    assert cls is MaskSpecEncoder
    enc = cls()  # no arguments: the checkpoint from the environment
    assert checker.check_audio_encoder(enc) is True


def test_no_checkpoint_is_an_error_and_random_must_be_asked_for(monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(ValueError, match=CHECKPOINT_ENV):
        MaskSpecEncoder()
    monkeypatch.setenv(CHECKPOINT_ENV, "random:tiny")
    assert MaskSpecEncoder().output_dim == 192


@pytest.mark.parametrize("hop_frames", [4, 16])
def test_frames_are_centred_timestamp_embeddings(checkpoint, hop_frames):
    enc = MaskSpecEncoder(hop_frames=hop_frames)
    n = int(torch.randint(32000, 64000, ()))
    audio = torch.randn(2, n) * 0.3
    out = enc(audio)
    n_frames = 1 + (n - 1) // 320
    assert out.shape == (2, n_frames // hop_frames, enc.output_dim)
    assert enc.hop_size_in_ms == hop_frames * 10
    side = (16 - hop_frames) // 2 * 320
    spec = LogMel().eval()(torch.nn.functional.pad(audio, (side, side)))
    ref, _ = timestamp_embeddings_of_spec(enc.encoder, spec, hop_frames)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_log_mel_in_chunks_is_the_whole_transform():
    front = LogMel().eval()
    n = int(torch.randint(20000, 40000, ()))
    wave = torch.randn(2, n)
    whole = front(wave)
    with torch.no_grad():
        precise = log_mel64(front, wave)
    for chunk in (7, 16, 33):  # exact up to the STFT's summation order: the rule against the float64 front end
        assert_within(log_mel_chunked(front, wave, chunk), whole, precise, terms=1024, name=f"chunk {chunk}")


def test_ten_minutes_in_chunks(checkpoint):
    enc = MaskSpecEncoder(hop_frames=16, chunk_frames=3000)
    audio = torch.randn(1, 600 * 32000) * 0.1
    out = enc(audio)
    assert out.shape == (1, (1 + (600 * 32000 - 1) // 320) // 16, 192) and torch.isfinite(out).all()


def test_bad_input_is_a_named_error(checkpoint):
    enc = MaskSpecEncoder()
    with pytest.raises(ValueError, match=r"mono \(B, T\).*\(2, 2, 32000\)"):
        enc(torch.randn(2, 2, 32000))  # stereo
    with pytest.raises(ValueError, match="empty audio"):
        enc(torch.zeros(1, 0))
    x = torch.randn(3, 32000)
    x[1, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf samples in clip\(s\) \[1\]"):
        enc(x)
    ten_hours = torch.zeros(1, 1).expand(1, 10 * 3600 * 32000)  # a view: no memory; refused before any work
    with pytest.raises(ValueError, match="36000 s is longer than max_seconds=3600"):
        enc(ten_hours)
    out = enc(torch.randn(1, 1000))  # shorter than one patch: zero-padded, documented
    assert out.shape[0] == 1 and out.shape[1] >= 1
