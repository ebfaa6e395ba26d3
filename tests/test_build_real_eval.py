"""Pieces of the real-recordings evaluation-set builder (experiments/build_real_eval.py) that need no Debian
package: the MIDI writer, the source -> fold assignment and the clear failure when a package is missing."""
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import build_real_eval as B  # noqa: E402


def _read_varlen(data: bytes, i: int) -> tuple[int, int]:
    n = 0
    while True:
        b = data[i]
        i += 1
        n = (n << 7) | (b & 0x7F)
        if not b & 0x80:
            return n, i


def test_write_midi_round_trips_note_times(tmp_path):
    notes = [(0.0, 0.5, 60, 100), (0.25, 1.0, 67, 80), (2.0, 0.3, 72, 127)]
    path = tmp_path / "a.mid"
    B.write_midi(path, program=40, notes=notes)
    data = path.read_bytes()
    assert data[:4] == b"MThd" and struct.unpack(">IHHH", data[4:14]) == (6, 0, 1, 960)
    assert data[14:18] == b"MTrk"
    track = data[22 : 22 + struct.unpack(">I", data[18:22])[0]]
    i, tick, ons, offs, program = 0, 0, {}, {}, None
    while i < len(track):
        dt, i = _read_varlen(track, i)
        tick += dt
        status = track[i]
        if status == 0xFF:  # meta event: type, length, data
            length = track[i + 2]
            i += 3 + length
        elif status == 0xC0:
            program, i = track[i + 1], i + 2
        else:
            pitch = track[i + 1]
            (ons if status == 0x90 else offs)[pitch] = tick / 960
            i += 3
    assert program == 40
    for start, dur, pitch, _ in notes:
        assert ons[pitch] == pytest.approx(start, abs=1e-3)
        assert offs[pitch] == pytest.approx(start + dur, abs=1e-3)


def test_varlen_encoding():
    for n in (0, 1, 127, 128, 300, 16383, 16384, 2**21):
        enc = B._varlen(n)
        assert _read_varlen(enc, 0) == (n, len(enc))


def test_every_fold_gets_a_source_and_no_source_two_folds():
    rng = np.random.default_rng(int(np.random.SeedSequence().entropy % 2**32))
    for n in (5, 7, 8, 11):
        sources = [B.Source(f"s{i}", "x") for i in range(n)]
        B.assign_folds(sources, rng, folds=5)
        folds = [s.fold for s in sources]
        assert set(folds) == {1, 2, 3, 4, 5}
        assert max(folds.count(f) for f in range(1, 6)) - min(folds.count(f) for f in range(1, 6)) <= 1


def test_missing_packages_fail_with_the_install_line(monkeypatch, tmp_path):
    monkeypatch.setattr(B, "DRUMKITS", tmp_path / "nope")
    monkeypatch.setattr(B, "SOUNDFONTS", {"TimGM6mb": tmp_path / "missing.sf2"})
    with pytest.raises(SystemExit) as e:
        B.check_packages()
    msg = str(e.value)
    assert "hydrogen-drumkits" in msg and "timgm6mb-soundfont" in msg and "apt-get install" in msg
