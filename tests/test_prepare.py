"""``python -m maskspec_fast.data prepare``: any source -> PCM16 (or FLAC) shards + index + bad-file report;
parallel, resumable, atomic, and its output trains through the CLI."""
import csv
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from audio_sets import decode_ref, encode, hf_table, make_hdf5, make_hf_parquet, tone

from maskspec_fast.data import build_dataset
from maskspec_fast.data.__main__ import main as data_main

h5py = pytest.importorskip("h5py")
pytest.importorskip("webdataset")


@pytest.fixture
def h5(tmp_path):
    rng = np.random.default_rng(5)
    waves = [tone(0.5 + 0.05 * i, rng.uniform(200, 3000), seed=i) for i in range(7)]
    names = [f"Yprep{i:07d}.mp3" for i in range(7)]
    a, b = tmp_path / "bal.h5", tmp_path / "unbal.h5"
    mp3a = make_hdf5(a, names[:4], waves[:4], [[1], [2, 3], [], [526]])
    mp3b = make_hdf5(b, names[4:], waves[4:], None)
    with h5py.File(b, "a") as f:
        f["mp3"][1] = np.frombuffer(os.urandom(999), dtype=np.uint8)  # clip 5 is corrupt
    return f"hdf5:{a},{b}", mp3a + mp3b, names, b


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*.tar"))}


def test_prepare_hdf5_writes_shards_index_and_bad_files(h5, tmp_path, capsys, monkeypatch):
    spec, mp3s, names, unbal = h5
    out = tmp_path / "out"
    assert data_main(["prepare", spec, str(out), "--shard-size", "3", "--workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((out / "dataset.json").read_text())
    assert f"--data {meta['spec']}" in printed and meta["spec"] == f"webdataset:{out}/shard-{{000000..000002}}.tar"
    assert meta["num_clips"] == 6 and meta["bad_clips"] == 1 and len(meta["class_names"]) == 527
    with open(out / "bad_files.csv") as f:
        bad = list(csv.DictReader(f))
    assert [(b["index"], b["source"]) for b in bad] == [("5", f"{unbal}:1:{names[5]}")]
    with open(out / "index.csv") as f:
        index = list(csv.DictReader(f))
    assert [r["key"] for r in index] == [f"{i:09d}_{names[i][:-4]}" for i in (0, 1, 2, 3, 4, 6)]
    assert index[1]["labels"] == "2;3" and index[4]["labels"] == "" and index[0]["shard"] == "shard-000000.tar"
    assert not list(out.glob("*.part")) and not list(out.glob(".*tmp"))

    ds = build_dataset(meta["spec"], clip_seconds=1.0)
    assert len(ds) == 6 and ds.multilabel and ds.num_classes == 527
    for j, i in enumerate((0, 1, 2, 3, 4, 6)):
        ref = decode_ref(mp3s[i])
        got = ds[j]["wave"][: len(ref)].numpy()
        assert np.abs(got - np.clip(ref, -1, 1)).max() <= 0.5 / 32768 + 1e-7  # PCM16 rounding only
        assert float(ds.index.size[j]) == 44 + 2 * len(ref)
        data = ds.read_member(j)
        assert hashlib.sha256(data).hexdigest() == index[j]["checksum"]
        assert abs(float(index[j]["seconds"]) - len(ref) / 32000) < 1e-5
    assert torch.nonzero(ds[1]["label"]).flatten().tolist() == [2, 3]

    from maskspec_fast.data import shards

    with monkeypatch.context() as m:  # the member tables beside the shards are used: no tar is scanned
        m.setattr(shards, "_scan_one", lambda *a: pytest.fail("scanned a prepared shard"))
        scanned = build_dataset(meta["spec"], clip_seconds=1.0)
    for k in range(3):
        (out / f"shard-{k:06d}.json").rename(out / f"shard-{k:06d}.json.off")
    rescanned = build_dataset(meta["spec"], clip_seconds=1.0)  # ... and they equal a scan
    for a, b in ((scanned.index, rescanned.index),):
        assert a.keys == b.keys and a.fields == b.fields and np.array_equal(a.offset, b.offset)
        assert np.array_equal(a.size, b.size) and np.array_equal(a.label_ids, b.label_ids)
    for k in range(3):
        (out / f"shard-{k:06d}.json.off").rename(out / f"shard-{k:06d}.json")

    serial = tmp_path / "serial"  # one worker or two: the same bytes
    assert data_main(["prepare", spec, str(serial), "--shard-size", "3", "--quiet"]) == 0
    assert _digests(serial) == _digests(out)


def test_prepare_resumes_after_a_kill_and_never_trusts_a_half_written_shard(h5, tmp_path, capsys):
    spec = h5[0]
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert data_main(["prepare", spec, str(clean), "--shard-size", "2", "--quiet"]) == 0
    assert data_main(["prepare", spec, str(out), "--shard-size", "2", "--quiet"]) == 0
    # what a kill leaves: shard 1 renamed but its .json not yet written; shard 2 half-written (.part)
    (out / "shard-000001.json").unlink()
    with open(out / "shard-000001.tar", "r+b") as f:
        f.truncate(700)
    (out / "shard-000002.json").unlink()
    os.replace(out / "shard-000002.tar", out / "shard-000002.tar.part")
    with open(out / "shard-000002.tar.part", "r+b") as f:
        f.truncate(1000)
    # and shard 3's .json names a different size (a tar replaced by hand): redone too
    rec = json.loads((out / "shard-000003.json").read_text())
    (out / "shard-000003.json").write_text(json.dumps({**rec, "bytes": rec["bytes"] + 1}))
    before = (out / "shard-000000.tar").stat().st_mtime_ns
    capsys.readouterr()
    assert data_main(["prepare", spec, str(out), "--shard-size", "2", "--quiet"]) == 0
    assert "1 of 4 shards already complete" in capsys.readouterr().out
    assert (out / "shard-000000.tar").stat().st_mtime_ns == before  # kept, not redone
    assert _digests(out) == _digests(clean) and not list(out.glob("*.part"))
    assert (out / "index.csv").read_text() == (clean / "index.csv").read_text()
    # another format into the same folder: every shard is redone, none of the old ones is mixed in
    assert data_main(["prepare", spec, str(out), "--shard-size", "2", "--format", "flac", "--quiet"]) == 0
    assert "already complete" not in capsys.readouterr().out
    assert build_dataset(json.loads((out / "dataset.json").read_text())["spec"]).index.fields == ["flac"] * 6
    assert data_main(["prepare", spec, str(out), "--shard-size", "3", "--quiet"]) == 2  # fewer shards: refused
    assert "beyond the 3 shards" in capsys.readouterr().err


def test_prepared_output_of_any_source_trains(tmp_path):
    from maskspec_fast.train.cli import main

    folder = tmp_path / "mp3s"
    folder.mkdir()
    for i in range(6):
        (folder / f"clip{i}.mp3").write_bytes(encode(tone(0.5, 300 + 90 * i, rate=44100, seed=i), "MP3", 44100))
    out = tmp_path / "prepared"
    assert data_main(["prepare", f"folder:{folder}", str(out), "--shard-size", "4", "--format", "flac",
                      "--quiet"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    ds = build_dataset(meta["spec"], clip_seconds=0.3)
    ref = torch.from_numpy(decode_ref((folder / "clip2.mp3").read_bytes()))
    # FLAC keeps 16-bit samples: the prepared copy is the float decode quantized to steps of 2**-15 (3.1e-5)
    assert ds.index.fields[2] == "flac" and torch.allclose(ds[2]["wave"], ref[:9600].clamp(-1, 1), atol=1e-4)
    args = ["pretrain", "--data", meta["spec"], "--steps", "2", "--batch-size", "2", "--clip-seconds", "0.32",
            "--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2", "--decoder-dim", "32",
            "--decoder-depth", "1", "--decoder-heads", "2", "--picture-every", "0", "--quiet", "--threads", "2",
            "--workers", "0"]  # in-process: this checks the shards' content trains, not the worker path
    assert main([*args, "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "final").is_dir()


def test_the_three_layouts_train_through_the_cli(h5, tmp_path):
    from audio_sets import make_shards

    from maskspec_fast.train.cli import main

    a = h5[0].split(",")[0]  # the balanced file: all entries decode
    shards = make_shards(tmp_path / "wds", [(f"k{i}", encode(tone(0.4, 500 + 40 * i), "FLAC"), [i % 2])
                                            for i in range(4)], per_shard=2)
    hf = make_hf_parquet(tmp_path / "hf", hf_table([encode(tone(0.4, 700 + 30 * i), "OGG") for i in range(4)],
                                                  [f"o{i}" for i in range(4)], [0, 1, 0, 1], ["a", "b"]))
    for k, spec in enumerate((a, f"webdataset:{shards}", f"hf:{hf}")):
        args = ["pretrain", "--data", spec, "--steps", "2", "--batch-size", "2", "--clip-seconds", "0.32",
                "--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2", "--decoder-dim", "32",
                "--decoder-depth", "1", "--decoder-heads", "2", "--picture-every", "0", "--quiet", "--threads",
                "2", "--workers", "1", "--out", str(tmp_path / f"run{k}")]
        assert main(args) == 0, spec
        assert (tmp_path / f"run{k}" / "final").is_dir()


def test_prepare_cli_errors_are_clear(tmp_path, capsys):
    assert data_main(["prepare", f"hdf5:{tmp_path / 'missing.h5'}", str(tmp_path / "o"), "--quiet"]) == 2
    assert "missing.h5 not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        data_main(["prepare", "--help"])
    assert "--workers" in capsys.readouterr().out


def test_prepare_killed_for_real_then_rerun_equals_a_clean_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    clean, out = tmp_path / "clean", tmp_path / "out"
    cmd = lambda dest: [sys.executable, "-m", "maskspec_fast.data", "prepare", "synthetic:120", str(dest),  # noqa: E731
                        "--shard-size", "2", "--quiet"]
    subprocess.run(cmd(clean), env=env, check=True, timeout=300)
    proc = subprocess.Popen(cmd(out), env=env)
    deadline = time.time() + 120
    while not (out / "shard-000003.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "prepare finished before it could be killed"
    done = len(list(out.glob("shard-*.json")))
    assert 0 < done < 60 and not (out / "index.csv").exists()
    subprocess.run(cmd(out), env=env, check=True, timeout=300)
    assert _digests(out) == _digests(clean) and len(_digests(out)) == 60
    assert (out / "index.csv").read_text() == (clean / "index.csv").read_text()
    assert not list(out.glob("*.part"))
