"""The data fault matrix (issue 21), run by CI: hostile files and hostile events, each met as a user meets it
(through ``python -m maskspec_fast.train`` / ``python -m maskspec_fast.data prepare``), tiny inputs, seconds each.

symlink loop in a folder | symlink member in a tar shard | truncated clip in prepared shards | a WAV declaring 1 Hz |
prepare with pool workers killed with -9, then rerun | a second prepare on a folder in use | prepare on a full disk.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from audio_sets import encode, tone

from maskspec_fast.data import build_dataset
from maskspec_fast.data.__main__ import main as data_main
from maskspec_fast.data.base import DatasetError

pytest.importorskip("webdataset")

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SMALL = ["--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2", "--decoder-dim", "32",
         "--decoder-depth", "1", "--decoder-heads", "2", "--clip-seconds", "0.32", "--log-every", "1",
         "--picture-every", "0", "--quiet", "--threads", "2", "--lr", "1e-3", "--warmup-steps", "0"]


def _wav(path: Path, seconds: float = 0.35, freq: float = 440.0, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(tone(seconds, freq, seed=seed), "WAV"))


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _one_line_error(err: str, *words: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------------------------------- symlink loop (item 3)
def test_a_symlink_loop_lists_each_file_once(tmp_path, capsys):
    root = tmp_path / "audio"
    for i in range(8):
        _wav(root / ("sub" if i % 2 else "top") / f"c{i}.wav", freq=300 + 40 * i, seed=i)
    os.symlink("..", root / "sub" / "up")  # sub/up -> .. : a loop back to the top
    os.symlink(root / "top", root / "again")  # and a second way into one folder
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="reached a second time through links were listed once"):
        assert data_main(["prepare", f"folder:{root}", str(out), "--quiet"]) == 0
    sources = [r["source"] for r in _rows(out / "index.csv")]
    assert len(sources) == 8 and len({os.path.realpath(s) for s in sources}) == 8  # not 328
    classes = tmp_path / "classes"
    for c in ("a", "b"):
        for i in range(3):
            _wav(classes / c / f"{c}{i}.wav", seed=i)
    os.symlink("..", classes / "a" / "loop")
    with pytest.warns(UserWarning):
        assert len(build_dataset(f"classes:{classes}", clip_seconds=0.3)) == 6


# ---------------------------------------------------------------------------------- symlink tar member (item 4)
def _shard_with_a_symlink(folder: Path) -> str:
    """A shard as `tar cf` makes one from a folder holding a link: k1.wav is a symbolic link to k0.wav."""
    folder.mkdir(parents=True)
    path = folder / "shard-000000.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for key, audio in (("k0", encode(tone(0.4, 500), "WAV")), ("k1", None), ("k2", encode(tone(0.4, 700), "WAV"))):
            if audio is None:
                info = tarfile.TarInfo(f"{key}.wav")
                info.type, info.linkname = tarfile.SYMTYPE, "k0.wav"
                tf.addfile(info)
                continue
            info = tarfile.TarInfo(f"{key}.wav")
            info.size = len(audio)
            import io

            tf.addfile(info, io.BytesIO(audio))
    return str(path)


def test_a_symlink_tar_member_is_reported_in_both_modes(tmp_path, capsys):
    from maskspec_fast.train.cli import main

    shard = _shard_with_a_symlink(tmp_path / "s")
    problem = "k1.wav: not a regular file (symbolic link -> k0.wav)"
    with pytest.raises(DatasetError, match=r"k1\.wav: not a regular file \(symbolic link -> k0\.wav\)"):
        build_dataset(f"webdataset:{shard}")
    base = ["pretrain", "--data", f"webdataset:{shard}", "--steps", "1", "--batch-size", "2", *SMALL]  # default workers
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "raise")]) == 2  # raise mode: one line naming the member
    _one_line_error(capsys.readouterr().err, problem)
    run = tmp_path / "skip"
    assert main([*base, "--skip-bad-files", "--out", str(run)]) == 0  # skip mode: listed in bad_files.csv
    lines = (run / "bad_files.csv").read_text().splitlines()
    assert sum(f"{shard}:k1.wav" in ln and "symbolic link -> k0.wav" in ln for ln in lines) == 1, lines
    out = tmp_path / "prepared"  # prepare: listed in its bad_files.csv, the other clips kept
    assert data_main(["prepare", f"webdataset:{shard}", str(out), "--quiet"]) == 0
    bad = _rows(out / "bad_files.csv")
    assert [b["source"] for b in bad] == [f"{shard}:k1.wav"] and "symbolic link" in bad[0]["problem"]
    assert [r["key"][-2:] for r in _rows(out / "index.csv")] == ["k0", "k2"]
    assert data_main(["prepare", f"webdataset:{shard}", str(tmp_path / "strict"), "--strict", "--quiet"]) == 2
    _one_line_error(capsys.readouterr().err, problem)


# ------------------------------------------------------------------------------ truncated prepared clip (item 5)
def test_a_truncated_clip_in_prepared_shards_is_reported_once_per_epoch(tmp_path):
    from maskspec_fast.train.cli import main

    src = tmp_path / "src"
    for i in range(8):
        _wav(src / f"c{i}.wav", freq=300 + 50 * i, seed=i)
    out = tmp_path / "prepared"
    assert data_main(["prepare", f"folder:{src}", str(out), "--shard-size", "4", "--quiet"]) == 0
    shard = out / "shard-000001.tar"
    with tarfile.open(shard) as tf:
        last = [m for m in tf.getmembers() if m.name.endswith(".wav")][-1]
    with open(shard, "r+b") as f:
        f.truncate(last.offset_data + last.size // 2)  # cut inside the last clip's audio
    key = last.name[: -len(".wav")]
    run = tmp_path / "run"
    spec = json.loads((out / "dataset.json").read_text())["spec"]
    args = ["pretrain", "--data", spec, "--steps", "4", "--batch-size", "3", "--skip-bad-files",  # default workers
            "--out", str(run), *SMALL]
    assert main(args) == 0  # 7 clips, 2 batches of 3 per epoch: 2 epochs
    lines = [ln for ln in (run / "bad_files.csv").read_text().splitlines() if key in ln]
    assert len(lines) == 2 and all("truncated tar" in ln for ln in lines), lines  # once per epoch, not twice


# ---------------------------------------------------------------------------------- a WAV declaring 1 Hz (item 7)
def _wav_declaring(rate: int, payload: int = 4000) -> bytes:
    pcm = (np.random.default_rng(0).standard_normal(payload // 2) * 3000).astype("<i2").tobytes()
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1, rate, 2 * rate, 2,
                       16, b"data", len(pcm)) + pcm


def test_a_4kb_wav_declaring_1hz_is_a_clear_fast_error(tmp_path, capsys):
    from maskspec_fast.data.decode import decode_bytes
    from maskspec_fast.frontend.audio import AudioFileError, load_audio
    from maskspec_fast.train.cli import main

    folder = tmp_path / "hostile"
    folder.mkdir()
    for i in range(3):
        _wav(folder / f"ok{i}.wav", seed=i)
    evil = folder / "evil.wav"
    evil.write_bytes(_wav_declaring(1))
    assert evil.stat().st_size < 4200
    t = time.perf_counter()
    with pytest.raises(AudioFileError, match=r"evil\.wav: sample rate 1 Hz is outside the accepted 1000\.\.384000"):
        load_audio(evil)
    with pytest.raises(AudioFileError, match="m:evil: sample rate 1 Hz"):
        decode_bytes(evil.read_bytes(), "m:evil")
    assert time.perf_counter() - t < 0.5  # was 13 s and +830 MB
    base = ["pretrain", "--data", f"folder:{folder}", "--steps", "1", "--batch-size", "2", *SMALL]  # default workers
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys.readouterr().err, "evil.wav: sample rate 1 Hz")
    out = tmp_path / "prepared"
    assert data_main(["prepare", f"folder:{folder}", str(out), "--quiet"]) == 0
    assert [(Path(b["source"]).name, "sample rate 1 Hz" in b["problem"]) for b in _rows(out / "bad_files.csv")] == [
        ("evil.wav", True)]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 32000])
def test_a_clip_decodes_only_its_window_and_equals_the_whole_decode_cropped(tmp_path, rate, monkeypatch):
    """The decode budget's window: a 30 s file gives a 0.5 s clip by reading about 0.5 s of it, and the values are
    those of the whole file's resampling, cropped (the same random crop)."""
    import soundfile as sf

    from maskspec_fast.frontend import audio
    from maskspec_fast.frontend.audio import crop_or_pad, load_audio

    x = np.random.default_rng(rate).uniform(-0.5, 0.5, 30 * rate).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(path, x, rate, subtype="PCM_16")
    whole = load_audio(path)
    ds = build_dataset(f"folder:{tmp_path}", clip_seconds=0.5, train=True, seed=3)
    read = []
    real = audio.soundfile_reader

    def counting(f, p):
        inner = real(f, p)

        def r(a, b):
            read.append(b - a)
            return inner(a, b)
        return r

    monkeypatch.setattr(audio, "soundfile_reader", counting)
    for epoch in range(3):
        ds.set_epoch(epoch)
        got = ds[0]["wave"]
        want = crop_or_pad(whole, ds.clip_samples, random=True, generator=ds._generator(0))
        assert torch.equal(got, want)
    assert max(read) < 0.6 * rate  # the window and the filter's reach, not 30 s


# --------------------------------------------------------------------------- prepare killed with -9 (item 6)
def _children(pid: int) -> list[int]:
    try:
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _digests(out: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the pool workers")
def test_prepare_with_workers_killed_with_9_then_rerun_holds_every_clip_once(tmp_path):
    cmd = lambda dest: [sys.executable, "-m", "maskspec_fast.data", "prepare", "synthetic:96", str(dest),  # noqa: E731
                        "--shard-size", "12", "--workers", "2", "--quiet"]
    clean, out = tmp_path / "clean", tmp_path / "out"
    subprocess.run(cmd(clean), env=ENV, check=True, timeout=300)
    proc = subprocess.Popen(cmd(out), env=ENV)
    deadline = time.time() + 120
    while not (out / "shard-000000.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    assert workers and 0 < len(list(out.glob("shard-*.json"))) < 8
    rerun = subprocess.Popen(cmd(out), env=ENV, stderr=subprocess.PIPE, text=True)  # at once, as a user would
    deadline = time.time() + 0.25  # a shard of 12 clips takes a worker ~1 s: one alive after 0.25 s is an orphan
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.01)
    orphans = [w for w in workers if _alive(w)]
    for w in orphans:
        os.kill(w, signal.SIGKILL)
    assert not orphans, "pool workers outlived their parent"
    rerun.stderr_text = rerun.communicate(timeout=300)[1]
    assert rerun.returncode == 0, rerun.stderr_text
    assert _digests(out) == _digests(clean) and len(_digests(out)) == 8
    keys = [r["key"] for r in _rows(out / "index.csv")]
    assert len(keys) == 96 and len(set(keys)) == 96 and (out / "index.csv").read_text() == (
        clean / "index.csv").read_text()
    ds = build_dataset(json.loads((out / "dataset.json").read_text())["spec"])
    assert sorted(ds.index.keys) == sorted(keys)  # the shards hold every clip exactly once
    assert not list(out.glob("*.part"))


def test_a_second_prepare_on_a_folder_in_use_stops_with_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "maskspec_fast.data", "prepare", "synthetic:200", str(out),
                             "--shard-size", "4", "--quiet"], env=ENV)
    try:
        deadline = time.time() + 120
        while not (out / "shard-000000.json").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, "the first prepare finished too early"
        capsys.readouterr()
        assert data_main(["prepare", "synthetic:200", str(out), "--shard-size", "4", "--quiet"]) == 2
        _one_line_error(capsys.readouterr().err, f"{out} is being written by another prepare (pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()
    assert data_main(["prepare", "synthetic:20", str(tmp_path / "other"), "--quiet"]) == 0  # free folders still work


# ------------------------------------------------------------------------------------ prepare on a full disk (item 8)
def _can_mount_tmpfs(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                           capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def _full_disk_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(12):
        _wav(src / f"c{i:02d}.wav", seconds=0.5, freq=300 + 30 * i, seed=i)  # ~32 KB each
    return src


def test_prepare_on_a_full_disk_says_so_in_one_line_and_a_rerun_completes(tmp_path):
    """A real small file system (tmpfs of 160 KB in a private mount namespace, ``unshare -rm``): the first run
    fills it, the folder is then given room (``mount -o remount,size=``) and the same command completes."""
    if not _can_mount_tmpfs(tmp_path):
        pytest.skip("no private tmpfs here (unshare -rm not permitted); "
                    "test_prepare_on_a_full_disk_injected covers the error path")
    src = _full_disk_folder(tmp_path)
    disk, report = tmp_path / "disk", tmp_path / "report"
    disk.mkdir()
    report.mkdir()
    out = disk / "out"
    prep = f"{sys.executable} -m maskspec_fast.data prepare folder:{src} {out} --shard-size 3 --quiet"
    script = (f"mount -t tmpfs -o size=160k tmpfs {disk} || exit 99; "
              f"{prep} 2> {report}/err1; echo $? > {report}/rc1; "
              f"ls {out} > {report}/ls1; "
              f"mount -o remount,size=2m {disk}; "
              f"{prep} 2> {report}/err2; echo $? > {report}/rc2; cp -r {out} {report}/out")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, timeout=300)
    assert r.returncode == 0
    rc1 = int((report / "rc1").read_text())
    err1 = (report / "err1").read_text()
    assert rc1 != 0, "the small disk did not fill"
    _one_line_error(err1, "no space left on device", str(out))
    assert not [n for n in (report / "ls1").read_text().split() if n.endswith(".part")]  # no partial file kept
    assert int((report / "rc2").read_text()) == 0, (report / "err2").read_text()
    keys = [r["key"] for r in _rows(report / "out" / "index.csv")]
    assert len(keys) == 12 and len(set(keys)) == 12


def test_prepare_on_a_full_disk_injected(tmp_path, capsys, monkeypatch):
    """Where no small file system can be made: ENOSPC injected at the write call once the 'disk' holds 200 KB."""
    import errno
    import io

    from maskspec_fast.data import prepare as prep

    src = _full_disk_folder(tmp_path)
    out = tmp_path / "out"
    budget = {"left": 200_000}
    real_open = open

    class Full(io.FileIO):
        def write(self, b):
            budget["left"] -= len(b)
            if budget["left"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)

    def small_disk_open(file, mode="r", *a, **k):
        if "w" in mode and "b" in mode:
            return Full(file, "w")
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(prep, "open", small_disk_open, raising=False)
    capsys.readouterr()
    assert data_main(["prepare", f"folder:{src}", str(out), "--shard-size", "3", "--quiet"]) == 2
    _one_line_error(capsys.readouterr().err, "no space left on device", str(out))
    assert not list(out.glob("*.part")) and 0 < len(list(out.glob("shard-*.json"))) < 4
    monkeypatch.undo()
    assert data_main(["prepare", f"folder:{src}", str(out), "--shard-size", "3", "--quiet"]) == 0
    keys = [r["key"] for r in _rows(out / "index.csv")]
    assert len(keys) == 12 and len(set(keys)) == 12
