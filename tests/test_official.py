"""``audioset:`` and ``vggsound:``: the official CSV layouts (as Google and VGG publish them) beside folders of
downloads in the containers users hold (m4a, webm, opus, mp4 with a video track, wav), some downloads missing."""
import csv
import warnings

import numpy as np
import pytest
import torch
from audio_sets import encode, encode_av, tonal

from maskspec_fast.data import build_dataset
from maskspec_fast.data.base import DatasetError
from maskspec_fast.data.official import name_candidates
from maskspec_fast.frontend.audio import load_audio

pytest.importorskip("av")

# 11-character YouTube ids, some with the characters that make names ambiguous ('-', '_', a leading 'Y')
IDS = ["--PJHxphWEs", "Yb_0-x9QzK1", "a_b-c_d-e_f", "0123456789A", "zzzzzzzzzz_", "Q-Q-Q-Q-Q-Q"]
MIDS = ["/m/09x0r", "/m/05zppz", "/m/02zsn", "/t/dd00088", "/m/0ytgt"]


def _class_csv(path):
    """class_labels_indices.csv: the official header and quoting, 527 rows (the first few real mids)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        w.writerow(["index", "mid", "display_name"])
        for i in range(527):
            mid = MIDS[i] if i < len(MIDS) else f"/m/x{i:04d}"
            w.writerow([i, mid, f"Class {i}, sound" if i % 7 == 0 else f"Class {i}"])


def _segments_csv(path, rows):
    """The official segments CSV: three comment lines, ``YTID, start, end, "mid,mid"`` rows."""
    lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
             f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=527, num_positive_labels=9",
             "# YTID, start_seconds, end_seconds, positive_labels"]
    lines += [f'{y}, {s:.3f}, {e:.3f}, "{",".join(labs)}"' for y, s, e, labs in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def audioset(tmp_path):
    """6 segments, 4 downloaded under 4 accepted names and containers, 2 missing."""
    root = tmp_path / "as"
    audio = root / "audio" / "part1"
    audio.mkdir(parents=True)
    _class_csv(root / "class_labels_indices.csv")
    rows = [(IDS[0], 30.0, 40.0, [MIDS[0], MIDS[3]]), (IDS[1], 0.0, 10.0, [MIDS[1]]),
            (IDS[2], 12.5, 22.5, [MIDS[2], MIDS[4]]), (IDS[3], 70.0, 80.0, [MIDS[0]]),
            (IDS[4], 5.0, 15.0, [MIDS[4]]), (IDS[5], 1.0, 11.0, [MIDS[1]])]
    _segments_csv(root / "balanced_train_segments.csv", rows)
    names = {0: (f"Y{IDS[0]}", "m4a", 44100), 1: (f"{IDS[1]}_0.000_10.000", "webm", 48000),
             2: (f"Y{IDS[2]}_12500_22500", "opus", 48000), 4: (f"{IDS[4]}", "wav", 32000)}
    for k, (stem, kind, rate) in names.items():
        x = tonal(1.2, rate, 2, seed=k)
        if kind == "wav":
            (audio / f"{stem}.wav").write_bytes(encode(x.mean(0), "WAV", rate))
        else:
            encode_av(str(audio / f"{stem}.{kind}"), x, rate, kind)
    (audio / "unrelated.m4a").write_bytes(b"")  # a name that is no id: ignored
    return root, rows, names


def test_audioset_official_layout(audioset, tmp_path):
    root, rows, names = audioset
    runs = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"2 of 6 rows of balanced_train_segments.csv have no file") as rec:
        ds = build_dataset(f"audioset:{root / 'balanced_train_segments.csv'}:audio={root / 'audio'}",
                           clip_seconds=1.0, missing_dir=str(runs))
    assert len([r for r in rec if "have no file" in str(r.message)]) == 1
    assert "\n" not in str(rec[0].message)
    assert len(ds) == 4 and ds.num_classes == 527 and ds.multilabel
    assert ds.class_names[7] == "Class 7, sound" and ds.mids[:5] == MIDS
    labels = ds.labels()
    assert labels.shape == (4, 527)
    assert labels[0].nonzero().flatten().tolist() == [0, 3]  # Speech + /t/dd00088, by class_labels_indices
    assert labels[2].nonzero().flatten().tolist() == [2, 4]
    assert [p.split("/")[-1] for p in ds.paths] == [f"{s}.{k}" for s, k, _ in names.values()]
    for i in range(4):
        s = ds[i]
        assert s["wave"].shape == (32000,) and s["wave"].abs().max() > 0.05
        assert torch.equal(s["label"], labels[i])
    with open(runs / "missing.csv") as f:
        missing = list(csv.DictReader(f))
    assert [(m["YTID"], m["start_seconds"], m["line"]) for m in missing] == [(IDS[3], "70.000", "7"),
                                                                           (IDS[5], "1.000", "9")]
    assert ds.missing_csv == runs / "missing.csv"
    # a second set of the run (evaluation) adds its rows, keeps the first one's
    _segments_csv(root / "eval_segments.csv", [(IDS[0], 30.0, 40.0, [MIDS[0]]), ("notthere123", 0.0, 10.0, [])])
    with pytest.warns(UserWarning, match="1 of 2 rows"):
        build_dataset(f"audioset:{root / 'eval_segments.csv'}:audio={root / 'audio'}", missing_dir=str(runs))
    with open(runs / "missing.csv") as f:
        assert [m["YTID"] for m in csv.DictReader(f)] == [IDS[3], IDS[5], "notthere123"]


def test_audioset_strict_default_folder_and_errors(audioset, tmp_path):
    root, _, _ = audioset
    seg = root / "balanced_train_segments.csv"
    with pytest.raises(DatasetError, match=r"2 of 6 rows .* strict=true refuses"):
        build_dataset(f"audioset:{seg}:audio={root / 'audio'}:strict=true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset(f"audioset:{seg}:audio={root / 'audio'}")  # no run folder: beside the segments CSV
    assert ds.missing_csv == root / "missing.csv" and (root / "missing.csv").is_file()
    other = tmp_path / "classes.csv"
    _class_csv(other)
    (root / "class_labels_indices.csv").unlink()
    with pytest.raises(DatasetError, match="class_labels_indices.csv not found"):
        build_dataset(f"audioset:{seg}:audio={root / 'audio'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(build_dataset(f"audioset:{seg}:audio={root / 'audio'}:classes={other}")) == 4
    _segments_csv(root / "bad.csv", [("abcdefghijk", 0.0, 10.0, ["/m/unknown"])])
    with pytest.raises(DatasetError, match=r"bad.csv line 4: labels \['/m/unknown'\]"):
        build_dataset(f"audioset:{root / 'bad.csv'}:audio={root / 'audio'}:classes={other}")
    _segments_csv(root / "gone.csv", [("abcdefghijk", 0.0, 10.0, [MIDS[0]])])
    with pytest.raises(DatasetError, match="none of the 1 rows"):
        build_dataset(f"audioset:{root / 'gone.csv'}:audio={root / 'audio'}:classes={other}")


def test_accepted_names():
    # both readings of a leading Y: the id is whichever the CSV lists
    assert name_candidates("Y--PJHxphWEs") == [("--PJHxphWEs", [])]
    assert name_candidates("Yb_0-x9QzK1") == [("Yb_0-x9QzK1", [])]  # an id that starts with Y, bare
    assert name_candidates("YYb_0-x9QzK1_1_2") == [("Yb_0-x9QzK1", [1.0, 2.0])]
    assert [y for y, _ in name_candidates("Yabcdefghij__1_2")] == ["Yabcdefghij", "abcdefghij_"]  # both readings
    assert ("---g-f_I2yQ", [1.0]) in name_candidates("---g-f_I2yQ_000001")
    assert ("--PJHxphWEs", [30.0, 40.0]) in name_candidates("--PJHxphWEs_30.000_40.000")
    assert ("--PJHxphWEs", [30.0, 40.0]) in name_candidates("Y--PJHxphWEs_30-40")
    assert name_candidates("short") == []


def _vggsound_csv(path, rows):
    """vggsound.csv as published: no header, ``YTID,start,label,split``."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def vggsound(tmp_path):
    root = tmp_path / "vgg"
    video = root / "video"
    video.mkdir(parents=True)
    rows = [(IDS[0], 1, "people marching", "test"), (IDS[1], 30, "dog barking", "train"),
            (IDS[2], 0, "male speech, man speaking", "train"), (IDS[3], 112, "dog barking", "train"),
            (IDS[4], 4, "zebra braying", "test"), (IDS[5], 250, "people marching", "train")]
    _vggsound_csv(root / "vggsound.csv", rows)
    for k in (0, 1, 2, 5):  # IDS[3] (train) and IDS[4] (test) not downloaded
        y, s = rows[k][0], rows[k][1]
        encode_av(str(video / f"{y}_{s:06d}.mp4"), tonal(1.1, 48000 if k % 2 else 44100, 2, seed=k),
                  48000 if k % 2 else 44100, "mp4")
    return root, rows


def test_vggsound_official_layout(vggsound, tmp_path):
    root, rows = vggsound
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"vggsound: 1 of 4 rows of vggsound.csv have no file"):
        train = build_dataset(f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}:split=train",
                              clip_seconds=1.0, missing_dir=str(run))
    with pytest.warns(UserWarning, match="1 of 2 rows"):
        test = build_dataset(f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}:split=test",
                             missing_dir=str(run))
    names = ["dog barking", "male speech, man speaking", "people marching", "zebra braying"]
    assert train.class_names == test.class_names == names and not train.multilabel
    assert train.labels().tolist() == [0, 1, 2] and test.labels().tolist() == [2]
    assert [p.rsplit("/", 1)[1] for p in train.paths] == [f"{IDS[1]}_000030.mp4", f"{IDS[2]}_000000.mp4",
                                                          f"{IDS[5]}_000250.mp4"]
    for i in range(3):
        assert train[i]["wave"].shape == (32000,) and train[i]["wave"].abs().max() > 0.05
    with open(run / "missing.csv") as f:
        assert [m["YTID"] for m in csv.DictReader(f)] == [IDS[3], IDS[4]]
    with pytest.raises(DatasetError, match="strict=true refuses"):
        build_dataset(f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}:strict=true")
    with pytest.raises(DatasetError, match="split must be one of"):
        build_dataset(f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}:split=val")


def test_vggsound_clip_is_the_video_sound(vggsound):
    """A clip's wave is the mp4's audio stream (the video track beside it ignored), decoded from the start."""
    root, rows = vggsound
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = build_dataset(f"vggsound:{root / 'vggsound.csv'}:video={root / 'video'}", clip_seconds=0.5,
                           missing_dir=str(root))
    whole = load_audio(ds.paths[0]).numpy()
    assert np.array_equal(ds[0]["wave"].numpy(), whole[:16000])


def test_multilabel_option_on_the_official_layouts(audioset, vggsound, tmp_path):
    """`:multilabel=` is accepted by every kind that reads labels: audioset: stays multi-label by default and is
    refused as single-label (clips with two classes); vggsound: becomes multi-hot on request."""
    import warnings

    from maskspec_fast.data import DatasetError

    as_root, vgg_root = audioset[0], vggsound[0]
    spec = f"audioset:{as_root / 'balanced_train_segments.csv'}:audio={as_root / 'audio'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing downloads, tested above
        assert build_dataset(spec, clip_seconds=1.0, missing_dir=str(tmp_path)).multilabel
        with pytest.raises(DatasetError, match="multilabel=false, but clip 0 has 2 classes"):
            build_dataset(f"{spec}:multilabel=false", clip_seconds=1.0, missing_dir=str(tmp_path))
        vgg = build_dataset(f"vggsound:{vgg_root / 'vggsound.csv'}:video={vgg_root / 'video'}:split=train"
                            ":multilabel=true", clip_seconds=1.0, missing_dir=str(tmp_path))
    assert vgg.multilabel and vgg.labels().dim() == 2 and (vgg.labels().sum(1) == 1).all()
