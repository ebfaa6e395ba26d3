"""The new inputs through the command lines with their default options (DataLoader workers included): training
on ``audioset:`` and on a folder of FFmpeg containers, ``embed`` on ``vggsound:`` compared with a second decode of
the same audio, ``prepare`` of compressed containers, and bad containers in one line / counted when skipped."""
import copy
import csv
import warnings

import numpy as np
import pytest
import torch
from audio_sets import av_decode_ref, encode_av, tonal
from test_ffmpeg import bad_containers
from test_official import IDS, MIDS, _class_csv, _segments_csv, _vggsound_csv
from tolerance import assert_within

from maskspec_fast.data.__main__ import main as data_main
from maskspec_fast.frontend.audio import load_audio, resample

pytest.importorskip("av")
pytest.importorskip("webdataset")

# a small model so that a CPU step takes well under a second; every data option is the CLI's default
SMALL = ["--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2", "--decoder-dim", "32",
         "--decoder-depth", "1", "--decoder-heads", "2", "--clip-seconds", "0.64", "--quiet", "--threads", "2"]


def _one_line_error(err: str, *words: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def _folder(root, kinds=("mp4", "m4a", "webm", "opus")):
    root.mkdir(parents=True, exist_ok=True)
    for i, kind in enumerate(kinds):
        rate = 44100 if kind in ("mp4", "m4a") and i % 2 else 48000
        encode_av(str(root / f"good{i}.{kind}"), tonal(1.0, rate, 2, seed=i), rate, kind)
    return root


def test_pretrain_on_audioset_layout_writes_missing_csv_in_the_run(tmp_path, capsys):
    from maskspec_fast.train.cli import main

    root = tmp_path / "as"
    audio = root / "audio"
    audio.mkdir(parents=True)
    _class_csv(root / "class_labels_indices.csv")
    rows = [(IDS[k], 10.0 * k, 10.0 * k + 10, [MIDS[k % 5]]) for k in range(6)]
    _segments_csv(root / "unbalanced_train_segments.csv", rows)
    for k, kind in enumerate(["m4a", "webm", "opus", "mp4"]):
        encode_av(str(audio / f"Y{IDS[k]}.{kind}"), tonal(1.0, 48000, 2, seed=k), 48000, kind)
    run = tmp_path / "run"
    spec = f"audioset:{root / 'unbalanced_train_segments.csv'}:audio={audio}"
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["pretrain", "--data", spec, "--steps", "2", "--batch-size", "2", "--out", str(run), *SMALL]) == 0
    said = [ln for ln in capsys.readouterr().err.splitlines() if "have no file" in ln]
    assert len(said) == 1 and said[0].startswith("warning: audioset: 2 of 6 rows")  # one line, no source line
    assert str(run / "missing.csv") in said[0]
    with open(run / "missing.csv") as f:
        assert [m["YTID"] for m in csv.DictReader(f)] == IDS[4:]
    assert (run / "final").exists()
    assert main(["pretrain", "--data", spec + ":strict=true", "--steps", "1", "--out", str(tmp_path / "s"),
                 *SMALL]) == 2
    _one_line_error(capsys.readouterr().err, "2 of 6 rows", "strict=true refuses")


def test_bad_containers_through_the_cli(tmp_path, capsys):
    """Without --skip-bad-files: one line naming the file; with it: each bad container replaced and counted in
    bad_files.csv. DataLoader workers at the default (1): the error crosses a process and stays one line."""
    from maskspec_fast.train.cli import main

    folder = _folder(tmp_path / "data", ("m4a", "webm", "mp4"))
    bad = bad_containers(folder)
    base = ["pretrain", "--data", f"folder:{folder}", "--batch-size", "7", *SMALL]
    capsys.readouterr()
    only = tmp_path / "one"
    _folder(only, ("m4a",))
    path, words = bad["truncated"]
    (only / path.name).write_bytes(path.read_bytes())
    assert main(["pretrain", "--data", f"folder:{only}", "--steps", "1", "--batch-size", "2",
                 "--out", str(tmp_path / "r0"), *SMALL]) == 2
    _one_line_error(capsys.readouterr().err, path.name, "no moov atom")
    run = tmp_path / "skip"
    assert main([*base, "--steps", "1", "--skip-bad-files", "--out", str(run)]) == 0  # one epoch of 7 clips
    with open(run / "bad_files.csv") as f:
        text = f.read()
    for name, (p, _) in bad.items():
        assert text.count(p.name) == 1, (name, text)
    for words in ("no audio stream", "no moov atom", "0 samples", "unknown audio codec"):
        assert words in text
    # prepare: the good ones converted to PCM shards, the bad ones in its bad_files.csv
    out = tmp_path / "prepared"
    assert data_main(["prepare", f"folder:{folder}", str(out), "--quiet"]) == 0
    with open(out / "bad_files.csv") as f:
        assert sorted(r["source"].rsplit("/", 1)[1] for r in csv.DictReader(f)) == sorted(p.name for p, _ in
                                                                                          bad.values())
    with open(out / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3


def test_prepared_shards_hold_the_ffmpeg_decode(tmp_path):
    """prepare converts mp4/m4a/webm/opus once into PCM16 shards: each member is the file's whole decode."""
    import tarfile

    from maskspec_fast.data.decode import decode_bytes

    folder = _folder(tmp_path / "data")
    out = tmp_path / "prepared"
    assert data_main(["prepare", f"folder:{folder}", str(out), "--quiet"]) == 0
    with open(out / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["source"] for r in rows) == sorted(str(p) for p in folder.iterdir())
    for r in rows:
        with tarfile.open(out / r["shard"]) as tf:
            data = tf.extractfile(f"{r['key']}.wav").read()
        got, ref = decode_bytes(data, r["key"]).numpy(), load_audio(r["source"]).numpy()
        assert got.shape == ref.shape and np.abs(got - ref).max() <= 0.5 / 32768 + 1e-6  # the PCM16 rounding


def test_embed_vggsound_matches_a_second_decode(tmp_path, capsys):
    """embed with default options on the official VGGSound layout: each file's embedding equals the model run on
    the same audio decoded by a second route (PyAV's resampler to float, our down-mix and resampler)."""
    from maskspec_fast import Classifier, ModelConfig
    from maskspec_fast.embed import main
    from maskspec_fast.frontend.logmel import log_mel

    root = tmp_path / "vgg"
    (root / "video").mkdir(parents=True)
    rows = [(IDS[k], 10 * k, ["dog", "cat", "bird"][k % 3], "train" if k < 4 else "test") for k in range(6)]
    _vggsound_csv(root / "vggsound.csv", rows)
    for k in range(3):  # IDS[3] missing
        rate = 44100 if k % 2 else 48000
        encode_av(str(root / "video" / f"{IDS[k]}_{10 * k:06d}.mp4"), tonal(1.5, rate, 2, seed=k), rate, "mp4")
    clf = Classifier(ModelConfig.from_preset("tiny", depth=1, frames=128), num_classes=3).eval()
    clf.save_pretrained(tmp_path / "clf")
    out = tmp_path / "emb" / "emb.npz"
    out.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["--checkpoint", str(tmp_path / "clf"), "--data",
                   f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}", "--out", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    z = np.load(out)
    assert len(z["paths"]) == 3
    with open(out.parent / "missing.csv") as f:
        assert [m["YTID"] for m in csv.DictReader(f)] == [IDS[3]]
    clf64 = copy.deepcopy(clf).double()

    @torch.no_grad()
    def clip_embedding(model, spec):  # what embed does with a file: one window, or the mean of sliding windows
        return model.embed(spec)[0] if spec.shape[-1] <= 128 else model.embed_windows(spec)[0][0].mean(0)

    for i, p in enumerate(z["paths"]):
        x, rate = av_decode_ref(p)
        wave = resample(torch.from_numpy(x.mean(axis=0)), rate, 32000)
        spec = log_mel(wave)
        assert_within(torch.from_numpy(z["embeddings"][i]), clip_embedding(clf, spec),
                      clip_embedding(clf64, spec.double()), terms=192, name=p)  # 192: the tiny width


def test_finetune_on_vggsound_train_evaluated_on_test(tmp_path, capsys):
    """finetune on vggsound:...:split=train (mp4 videos), evaluated on split=test, DataLoader workers at their
    default; both sets write their missing rows into the run's one missing.csv."""
    import json

    from maskspec_fast.train.cli import main

    root = tmp_path / "vgg"
    (root / "video").mkdir(parents=True)
    labels = ["dog", "cat", "bird"]
    rows = [(IDS[k], k, labels[k % 3], "train" if k < 4 else "test") for k in range(6)]
    rows += [("abcdefghij" + str(k), k, labels[k % 3], "train") for k in range(3)]
    _vggsound_csv(root / "vggsound.csv", rows)
    for y, start, _, _ in rows:
        if y in (IDS[3], IDS[5]):  # one train and one test video not downloaded
            continue
        encode_av(str(root / "video" / f"{y}_{start:06d}.mp4"), tonal(0.8, 48000, 2, seed=start), 48000, "mp4")
    out = tmp_path / "ft"
    spec = f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}"
    args = ["finetune", "--data", spec + ":split=train", "--eval-data", spec + ":split=test", "--steps", "2",
            "--batch-size", "2", "--clip-seconds", "0.32", "--set", "embed_dim=32", "--set", "depth=1", "--set",
            "num_heads=2", "--quiet", "--threads", "2", "--val-fraction", "0", "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert "accuracy" in json.dumps(summary["eval"]) and '"clips": 1' in json.dumps(summary["eval"])
    assert "fine-tuning 6 clips (3 classes, multilabel=False)" in capsys.readouterr().out
    with open(out / "missing.csv") as f:
        assert sorted(m["YTID"] for m in csv.DictReader(f)) == sorted([IDS[3], IDS[5]])
