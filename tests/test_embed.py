"""``python -m maskspec_fast.embed`` on a small folder with a corrupt file, a too-short one and a long one."""
import copy
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from tolerance import assert_within

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.embed import main, run
from maskspec_fast.frontend.logmel import log_mel


def tiny():
    return ModelConfig.from_preset("tiny", depth=2, decoder_depth=1, frames=128)  # 1.28 s windows


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(d / "a.wav", rng.uniform(-0.5, 0.5, 32000).astype(np.float32), 32000)  # 1 s (100 frames)
    sf.write(d / "sub" / "b.flac", rng.uniform(-0.5, 0.5, 16000 * 3).astype(np.float32), 16000)  # 3 s: windows
    sf.write(d / "c.wav", rng.uniform(-0.5, 0.5, 24000).astype(np.float32), 48000)  # 0.5 s
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    sf.write(d / "tiny.wav", np.zeros(100, np.float32), 32000)  # shorter than one patch
    return d


def test_cli_npz_with_timestamps_lists_bad_files(tmp_path, folder, capsys):
    clf = Classifier(tiny(), num_classes=3).eval()
    gold = copy.deepcopy(clf).double()
    clf.save_pretrained(tmp_path / "clf")
    out = tmp_path / "emb.npz"
    rc = main(["--checkpoint", str(tmp_path / "clf"), "--data", f"folder:{folder}", "--out", str(out),
               "--timestamps", "--batch-size", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 3  # some files were skipped
    assert "corrupt.wav" in err and "tiny.wav" in err and "too short" in err
    z = np.load(out)
    names = [p.split("/")[-1] for p in z["paths"]]
    assert names == ["a.wav", "c.wav", "b.flac"]  # sorted by path; bad ones absent
    assert sorted(p.split("/")[-1] for p in z["failed_paths"]) == ["corrupt.wav", "tiny.wav"]
    assert z["embeddings"].shape == (3, 192) and z["embeddings"].dtype == np.float32
    tsv = (tmp_path / "emb.npz.failed.tsv").read_text()
    assert "corrupt.wav\t" in tsv and "tiny.wav\t" in tsv

    # each row equals the model run on that file alone (batching with padding does not change it)
    for i, p in enumerate(z["paths"]):
        from maskspec_fast.frontend.audio import load_audio

        spec = log_mel(load_audio(p, 32000))
        with torch.no_grad():
            ref, ref64 = (c.embed(x)[0] if x.shape[-1] <= 128 else c.embed_windows(x)[0][0].mean(0)
                          for c, x in ((clf, spec), (gold, spec.double())))
        assert_within(torch.from_numpy(z["embeddings"][i]), ref, ref64, terms=192, name=p)
    off = z["timestamp_offsets"]
    assert off.shape == (4,) and off[-1] == len(z["timestamps"]) == len(z["timestamp_embeddings"])
    frames_b = 1 + (3 * 32000 - 1) // 320  # b.flac at 32 kHz
    assert off[3] - off[2] == (frames_b - 16) // 4 + 1
    assert np.allclose(np.diff(z["timestamps"][off[0] : off[1]]), 40.0)


def test_parquet_from_a_pretrain_mae_pth(tmp_path, folder):
    pa = pytest.importorskip("pyarrow.parquet")
    m = Model(tiny())
    m.save_mae_checkpoint(tmp_path / "ck.pth")
    out = run(str(tmp_path / "ck.pth"), f"folder:{folder}", device="cpu", batch_size=8, progress=False)
    from maskspec_fast.embed import write

    files = write(out, tmp_path / "emb.parquet", timestamps=False)
    table = pa.read_table(files[0])
    assert table.column_names == ["path", "embedding"] and table.num_rows == 3
    assert len(table.column("embedding")[0].as_py()) == 192
    # the encoder is the pre-training model's
    clf = Classifier.from_model(m, num_classes=1).eval()
    spec = log_mel(torch.from_numpy(sf.read(folder / "a.wav", dtype="float32")[0]))
    with torch.no_grad():
        ref, ref64 = clf.embed(spec)[0], copy.deepcopy(clf).double().embed(spec.double())[0]
    row = table.column("path").to_pylist().index(str(folder / "a.wav"))
    got = torch.tensor(table.column("embedding")[row].as_py(), dtype=torch.float32)
    assert_within(got, ref, ref64, terms=192, name="parquet row")


def test_cli_help_and_usage_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "maskspec_fast.embed", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--timestamps" in r.stdout and "folder:" in r.stdout
    assert main(["--checkpoint", str(tmp_path / "nope"), "--data", "synthetic:2", "--out", str(tmp_path / "e.npz")]) == 2
    assert main(["--checkpoint", "x", "--data", "synthetic:2", "--out", str(tmp_path / "e.csv")]) == 2
