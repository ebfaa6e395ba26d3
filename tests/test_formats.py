"""Readers for the layouts in the wild: hdf5 (PaSST / MaskSpec AudioSet), webdataset tar shards, Hugging Face."""
import io
import os
import tarfile

import numpy as np
import pytest
import torch
from audio_sets import (
    decode_ref,
    encode,
    hf_table,
    make_hdf5,
    make_hf_parquet,
    make_hf_saved,
    make_shards,
    tone,
)
from tolerance import assert_dtype_bound

from maskspec_fast.data import build_dataset
from maskspec_fast.data.base import DatasetError, collate
from maskspec_fast.frontend.audio import AudioFileError

pytest.importorskip("h5py")
pytest.importorskip("webdataset")


def _freqs(n, seed):
    return np.random.default_rng(seed).uniform(200, 4000, n)


# ------------------------------------------------------------------------------------------------------ decode
@pytest.mark.parametrize("channels,rate", [(1, 32000), (2, 32000), (1, 16000), (2, 44100)])
def test_pcm16_fast_path_equals_libsndfile(channels, rate, tmp_path):
    import soundfile as sf

    from maskspec_fast.data.decode import decode_bytes, encode_pcm16_wav, parse_pcm16_wav

    x = np.random.default_rng(rate + channels).uniform(-0.9, 0.9, (3001, channels)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    assert parse_pcm16_wav(data) is not None  # the fast path is the one taken
    ref = decode_ref(data)
    got = decode_bytes(data, "mem.wav").numpy()
    assert got.shape == ref.shape and np.array_equal(got, ref)
    # our writer's output reads back within the PCM16 step, and libsndfile agrees with the fast path
    mono = x[:, 0]
    enc = encode_pcm16_wav(mono, rate)
    back, sr = sf.read(io.BytesIO(enc), dtype="float32")
    assert sr == rate and np.abs(back - mono).max() <= 0.5 / 32768 + 1e-7
    if rate == 32000:
        assert np.array_equal(decode_bytes(enc, "w").numpy(), back)
    assert parse_pcm16_wav(encode(mono, "FLAC", rate)) is None


def test_decode_errors_name_the_entry():
    from maskspec_fast.data.decode import decode_bytes

    with pytest.raises(AudioFileError, match="f.h5:3:Yabc.mp3: empty entry"):
        decode_bytes(b"", "f.h5:3:Yabc.mp3")
    with pytest.raises(AudioFileError, match="s.tar:k.flac: corrupt or undecodable"):
        decode_bytes(os.urandom(2000), "s.tar:k.flac")
    with pytest.raises(AudioFileError, match="too short"):
        decode_bytes(encode(tone(0.05, 440), "WAV"), "x", min_samples=5121)


# -------------------------------------------------------------------------------------------------------- hdf5
@pytest.fixture
def h5_pair(tmp_path):
    """balanced.h5 (5 clips, with target) + unbalanced.h5 (4 clips, no target), real mp3 bytes."""
    f = _freqs(9, 1)
    waves = [tone(1.0 + 0.1 * i, f[i], seed=i) for i in range(9)]
    names = [f"Y{i:011d}.mp3" for i in range(9)]
    labels = [[0], [5, 526], [], [17], [3, 4, 5]]
    a, b = tmp_path / "balanced_train.h5", tmp_path / "unbalanced_train.h5"
    mp3a = make_hdf5(a, names[:5], waves[:5], labels)
    mp3b = make_hdf5(b, names[5:], waves[5:], None)
    return a, b, names, mp3a + mp3b, labels


def test_hdf5_reads_the_passt_layout_as_one_set(h5_pair):
    a, b, names, mp3s, labels = h5_pair
    ds = build_dataset(f"hdf5:{a},{b}", clip_seconds=1.0)
    assert len(ds) == 9 and ds.num_classes == 527 and ds.multilabel
    for i in range(9):
        s = ds[i]
        ref = decode_ref(mp3s[i])
        n = min(len(ref), 32000)
        assert torch.equal(s["wave"][:n], torch.from_numpy(ref[:n]))
        assert s["path"] == f"{a if i < 5 else b}:{i if i < 5 else i - 5}:{names[i]}"
        want = labels[i] if i < 5 else []  # the file without `target` is unlabeled (fine for pre-training)
        assert torch.nonzero(s["label"]).flatten().tolist() == want
    counts = ds.class_counts()
    assert counts[5] == 2 and counts[526] == 1 and int(counts.sum()) == 7
    w = ds.sample_weights()
    assert w.shape == (9,)
    assert_dtype_bound(w[1], ds.class_weights()[[5, 526]].double().sum(), torch.float32, terms=2, name="weight")


def test_hdf5_opens_lazily_in_each_dataloader_worker(h5_pair):
    a, b, _, mp3s, _ = h5_pair
    ds = build_dataset(f"hdf5:{a},{b}", clip_seconds=1.0)
    ds[0]  # the parent holds an open handle now: workers must not reuse it
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate,
                                         multiprocessing_context="fork")
    got = torch.cat([batch["index"] for batch in loader])
    assert got.tolist() == list(range(9))


def test_hdf5_corrupt_entry_is_named_or_skipped(tmp_path):
    import h5py

    waves = [tone(1.0, 300 + 100 * i, seed=i) for i in range(4)]
    names = [f"Ycorrupt{i}.mp3" for i in range(4)]
    path = tmp_path / "eval.h5"
    make_hdf5(path, names, waves, [[1]] * 4)
    with h5py.File(path, "a") as f:
        f["mp3"][2] = np.frombuffer(os.urandom(3000), dtype=np.uint8)  # damaged bytes
    ds = build_dataset(f"hdf5:{path}", clip_seconds=1.0)
    with pytest.raises(AudioFileError, match=rf"{path}:2:Ycorrupt2.mp3: corrupt or undecodable"):
        ds[2]
    skip = build_dataset(f"hdf5:{path}", clip_seconds=1.0, on_error="skip")
    s = skip[2]
    assert s["replaced"] == f"{path}:2:Ycorrupt2.mp3" and s["index"] == 3


def test_hdf5_bad_files_are_clear_errors(tmp_path):
    import h5py

    with pytest.raises(DatasetError, match="not found"):
        build_dataset(f"hdf5:{tmp_path / 'nope.h5'}")
    p = tmp_path / "wrong.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("audio_name", data=np.array([b"a.mp3"], dtype="S20"))
    with pytest.raises(DatasetError, match="no dataset 'mp3'"):
        build_dataset(f"hdf5:{p}")
    q = tmp_path / "width.h5"
    make_hdf5(q, ["a.mp3"], [tone(0.5, 440)], [[3]], num_classes=10)
    with pytest.raises(DatasetError, match="expected .1, 66."):
        build_dataset(f"hdf5:{q}")
    one = build_dataset(f"hdf5:{q}:num_classes=10", clip_seconds=0.5)  # one class per clip: single-label
    assert not one.multilabel and int(one[0]["label"]) == 3
    assert build_dataset(f"hdf5:{q}:num_classes=10:multilabel=true", clip_seconds=0.5)[0]["label"].tolist()[3] == 1.0


# ------------------------------------------------------------------------------------------------- webdataset
@pytest.fixture
def flac_shards(tmp_path):
    f = _freqs(11, 2)
    waves = [tone(0.8 + 0.05 * i, f[i], rate=16000, seed=i) for i in range(11)]  # 16 kHz: resampled on read
    samples = [(f"clip{i:03d}", encode(w, "FLAC", 16000), [["dog"], ["cat", "dog"], []][i % 3])
               for i, w in enumerate(waves)]
    pattern = make_shards(tmp_path / "wds", samples, per_shard=4)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    return pattern, samples, classes


def test_webdataset_reads_brace_patterns_and_json_labels(flac_shards):
    pattern, samples, classes = flac_shards
    ds = build_dataset(f"webdataset:{pattern}:classes={classes}", clip_seconds=1.0)
    assert len(ds) == 11 and len(ds.index.shards) == 3 and ds.class_names == ["cat", "dog", "bird"]
    for i, (key, audio, labs) in enumerate(samples):
        s = ds[i]
        ref = decode_ref(audio)
        n = min(len(ref), 32000)
        assert torch.equal(s["wave"][:n], torch.from_numpy(ref[:n]))
        assert s["path"].endswith(f"shard-{i // 4:06d}.tar:{key}.flac")
        assert [ds.class_names[c] for c in torch.nonzero(s["label"]).flatten().tolist()] == sorted(
            labs, key=ds.class_names.index)
    found = build_dataset(f"webdataset:{pattern}", clip_seconds=1.0)  # no class list: the names found, sorted
    assert found.class_names == ["cat", "dog"]


def test_webdataset_label_not_in_class_list(flac_shards, tmp_path):
    pattern, _, _ = flac_shards
    only_cat = tmp_path / "cat.txt"
    only_cat.write_text("cat\n")
    with pytest.raises(DatasetError, match=r"shard-000000.tar:clip000.json: labels \['dog'\] not in the class list"):
        build_dataset(f"webdataset:{pattern}:classes={only_cat}")
    ds = build_dataset(f"webdataset:{pattern}:classes={only_cat}", on_error="skip")
    assert len(ds) == 3 and ds.index.keys == ["clip002", "clip005", "clip008"]  # only the unlabeled clips remain
    assert len(ds.bad) == 8 and all("not in the class list" in p for _, p in ds.bad)


def _truncate(path, keep):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:keep])


def test_webdataset_truncated_and_missing_shards(flac_shards):
    pattern, samples, classes = flac_shards
    one = lambda k: pattern.replace("{000000..000002}", f"{k:06d}")  # noqa: E731
    missing = f"{one(0)}::{one(9)}"  # '::' joins patterns (webdataset's rule)
    with pytest.raises(DatasetError, match="shard-000009.tar: shard not found"):
        build_dataset(f"webdataset:{missing}:classes={classes}", on_error="raise")
    ds = build_dataset(f"webdataset:{missing}:classes={classes}", on_error="skip")
    assert len(ds) == 4 and ds.bad == [(one(9), "shard not found")]

    with tarfile.open(one(1)) as tf:
        members = tf.getmembers()
    last_audio = [m for m in members if m.name.endswith(".flac")][-1]
    _truncate(one(1), last_audio.offset_data + last_audio.size // 2)  # cut inside the last clip's audio
    with pytest.raises(DatasetError, match=rf"shard-000001.tar:{last_audio.name}: truncated tar"):
        build_dataset(f"webdataset:{pattern}:classes={classes}")
    ds = build_dataset(f"webdataset:{pattern}:classes={classes}", on_error="skip")
    assert len(ds) == 10 and [w for w, p in ds.bad if "truncated" in p] == [f"{one(1)}:{last_audio.name}"]
    assert "clip007" not in ds.index.keys

    with tarfile.open(one(2)) as tf:  # a tar cut at a member boundary: the end-of-archive blocks are lost
        end = max(m.offset_data + -(-m.size // 512) * 512 for m in tf.getmembers())
    _truncate(one(2), end)
    with pytest.raises(DatasetError, match="shard-000002.tar: truncated tar: no end-of-archive"):
        build_dataset(f"webdataset:{one(2)}:classes={classes}")
    with open(one(2), "wb") as f:
        f.write(os.urandom(700))
    with pytest.raises(DatasetError, match="shard-000002.tar: "):
        build_dataset(f"webdataset:{one(2)}:classes={classes}")


def test_webdataset_corrupt_member_is_named_or_replaced(tmp_path):
    good = [(f"k{i}", encode(tone(0.7, 500 + 50 * i, seed=i), "FLAC"), [i % 2]) for i in range(5)]
    good[3] = ("k3", os.urandom(1500), [1])
    pattern = make_shards(tmp_path / "s", good, per_shard=5)
    ds = build_dataset(f"webdataset:{pattern}", clip_seconds=0.5)
    assert ds.class_names == ["0", "1"]
    with pytest.raises(AudioFileError, match=r"shard-000000.tar:k3.flac: corrupt or undecodable"):
        ds[3]
    skip = build_dataset(f"webdataset:{pattern}", clip_seconds=0.5, on_error="skip")
    assert skip[3]["replaced"].endswith("shard-000000.tar:k3.flac") and skip[3]["index"] == 4


def test_webdataset_index_labels_and_out_of_range(tmp_path):
    samples = [(f"a{i}", encode(tone(0.5, 440), "WAV"), [i, 4]) for i in range(3)]
    pattern = make_shards(tmp_path / "s", samples, per_shard=3, fmt="wav")
    assert build_dataset(f"webdataset:{pattern}").class_names == [str(c) for c in range(5)]
    with pytest.raises(DatasetError, match=r"a0.json: labels \[4\] not in the class list \(3 classes\)"):
        build_dataset(f"webdataset:{pattern}:num_classes=3")


# ---------------------------------------------------------------------------------------------------------- hf
@pytest.mark.parametrize("layout", ["parquet", "saved", "dict"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_hf_audio_column_and_class_labels(tmp_path, layout, multilabel):
    pytest.importorskip("pyarrow")
    waves = [tone(0.6, 300 + 70 * i, rate=16000, seed=i) for i in range(7)]
    audio = [encode(w, ["FLAC", "WAV", "OGG"][i % 3], 16000) for i, w in enumerate(waves)]
    names = ["speech", "music", "noise"]
    labels = [[i % 3, 2] if multilabel else i % 3 for i in range(7)]
    table = hf_table(audio, [f"c{i}.x" for i in range(7)], labels, names, rate=16000, multilabel=multilabel)
    if layout == "parquet":
        root = make_hf_parquet(tmp_path / "pq", table)
    elif layout == "saved":
        root = make_hf_saved(tmp_path / "saved", table, names, 16000, multilabel)
    else:  # a DatasetDict.save_to_disk folder: one saved set per split
        root = tmp_path / "dd"
        make_hf_saved(root / "train", table, names, 16000, multilabel)
        (root / "dataset_dict.json").write_text('{"splits": ["train"]}')
    ds = build_dataset(f"hf:{root}", clip_seconds=0.5, train=False)
    assert len(ds) == 7 and ds.class_names == names and ds.multilabel == multilabel
    for i in range(7):
        s = ds[i]
        ref = decode_ref(audio[i])
        assert torch.equal(s["wave"], torch.from_numpy(ref[:16000]))
        if multilabel:
            assert torch.nonzero(s["label"]).flatten().tolist() == sorted({i % 3, 2})
        else:
            assert int(s["label"]) == i % 3
        assert s["path"].endswith(f":c{i}.x")


def test_hf_without_labels_is_unlabeled(tmp_path):
    pytest.importorskip("pyarrow")
    audio = [encode(tone(0.6, 440), "FLAC") for _ in range(2)]
    root = make_hf_parquet(tmp_path / "pq", hf_table(audio, ["a", "b"], None, None))
    ds = build_dataset(f"hf:{root}", clip_seconds=0.5)
    assert ds.num_classes == 0 and int(ds[1]["label"]) == -1
    with pytest.raises(DatasetError, match="neither a save_to_disk folder"):
        build_dataset(f"hf:{tmp_path / 'nothing'}")


def test_webdataset_single_label_option(tmp_path):
    samples = [(f"s{i}", encode(tone(0.5, 440), "WAV"), [i % 2]) for i in range(4)]
    pattern = make_shards(tmp_path / "s", samples, per_shard=4, fmt="wav")
    ds = build_dataset(f"webdataset:{pattern}:multilabel=false", clip_seconds=0.5)
    assert not ds.multilabel and [int(ds[i]["label"]) for i in range(4)] == [0, 1, 0, 1]
    # one class per sample: single-label by default too (the one rule, as for manifests and hdf5:)
    assert build_dataset(f"webdataset:{pattern}", clip_seconds=0.5)[1]["label"].tolist() == 1
    multi = build_dataset(f"webdataset:{pattern}:multilabel=true", clip_seconds=0.5)
    assert multi.multilabel and multi[1]["label"].tolist() == [0.0, 1.0]


# ------------------------------------------------------------------------ formats as their producers write them
# --workers 0: these check that each producer's format trains, not the worker path (test_bad_input_matrix.py)
SMALL_FT = ["--steps", "1", "--batch-size", "2", "--clip-seconds", "0.32", "--set", "embed_dim=32", "--set",
            "depth=1", "--set", "num_heads=2", "--picture-every", "0", "--quiet", "--threads", "2", "--workers", "0",
            "--val-fraction", "0", "--no-refit-head"]


@pytest.fixture
def hub_parquet(tmp_path):
    """A hub-style parquet folder (data/train-*, data/test-*) whose labels are plain strings (no ClassLabel)."""
    pytest.importorskip("pyarrow")
    from audio_sets import hf_string_table, make_hf_hub

    def table(n, offset):
        audio = [encode(tone(0.4, 300 + 50 * (i + offset), seed=i), "FLAC") for i in range(n)]
        labels = [["dog", "cat", "bird"][(i + offset) % 3] for i in range(n)]
        return hf_string_table(audio, [f"{offset + i}.flac" for i in range(n)], labels), labels

    (train, train_labels), (test, test_labels) = table(6, 0), table(3, 100)
    return make_hf_hub(tmp_path / "hub", {"train": train, "test": test}), train_labels, test_labels


def test_hf_hub_splits_are_read_apart_and_string_labels_map_to_sorted_names(hub_parquet):
    root, train_labels, test_labels = hub_parquet
    train = build_dataset(f"hf:{root}:split=train", clip_seconds=0.3)
    test = build_dataset(f"hf:{root}:split=test", clip_seconds=0.3)
    assert (len(train), len(test)) == (6, 3)  # not 9 and 9: the splits are never merged
    assert len(build_dataset(f"hf:{root}", clip_seconds=0.3)) == 6  # no split asked: train
    assert train.class_names == ["bird", "cat", "dog"] and not train.multilabel  # sorted, as manifests and shards
    assert [train.class_names[int(train[i]["label"])] for i in range(6)] == train_labels
    assert [test.class_names[int(test[i]["label"])] for i in range(3)] == test_labels
    assert all(test[i]["path"].split(":")[0].endswith("test-00000-of-00001.parquet") for i in range(3))
    with pytest.raises(DatasetError, match=r"has no split 'validation' \(splits found: test, train\)"):
        build_dataset(f"hf:{root}:split=validation")


def test_cli_finetunes_on_hub_splits_with_string_labels(hub_parquet, tmp_path, capsys):
    import json

    from maskspec_fast.train.cli import main

    root = hub_parquet[0]
    out = tmp_path / "ft"
    args = ["finetune", "--data", f"hf:{root}:split=train", "--eval-data", f"hf:{root}:split=test", *SMALL_FT,
            "--out", str(out)]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert "accuracy" in json.dumps(summary["eval"]) and '"clips": 3' in json.dumps(summary["eval"])
    assert "fine-tuning 6 clips (3 classes, multilabel=False)" in capsys.readouterr().out


def test_webdataset_cls_members_are_labels(tmp_path, capsys):
    """`.cls` members as webdataset's TarWriter writes them (the class index as text): a single-label set."""
    import json

    from maskspec_fast.train.cli import main

    samples = [(f"c{i}", encode(tone(0.4, 400 + 30 * i, seed=i), "FLAC"), i % 3) for i in range(6)]
    pattern = make_shards(tmp_path / "cls", samples, per_shard=4, label_member="cls")
    ds = build_dataset(f"webdataset:{pattern}", clip_seconds=0.3)
    assert ds.class_names == ["0", "1", "2"] and not ds.multilabel
    assert [int(ds[i]["label"]) for i in range(6)] == [i % 3 for i in range(6)]
    assert build_dataset(f"webdataset:{pattern}:multilabel=true", clip_seconds=0.3)[4]["label"].tolist() == [0, 1, 0]
    out = tmp_path / "ft"
    spec = f"webdataset:{pattern}"
    assert main(["finetune", "--data", spec, "--eval-data", spec, *SMALL_FT, "--out", str(out)]) == 0
    assert "accuracy" in json.dumps(json.loads((out / "summary.json").read_text())["eval"])


def test_finetuning_a_set_without_labels_says_where_labels_were_looked_for(tmp_path, capsys):
    from maskspec_fast.train.cli import main

    samples = [(f"u{i}", encode(tone(0.4, 400 + 30 * i, seed=i), "FLAC"), None) for i in range(4)]
    pattern = make_shards(tmp_path / "none", samples, per_shard=4)
    capsys.readouterr()
    assert main(["finetune", "--data", f"webdataset:{pattern}", *SMALL_FT, "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no labels found" in err and ".cls" in err and "'labels'" in err
    assert "Traceback" not in err and "num_classes must be" not in err


@pytest.fixture
def esc50_h5(tmp_path):
    """One ESC-50 fold as the MaskSpec / PaSST scripts pack it: one-hot rows of 50 classes, np.packbits."""
    waves = [tone(0.4, 300 + 40 * i, seed=i) for i in range(6)]
    names = [f"1-{i}-A-{7 * i % 50}.mp3" for i in range(6)]
    labels = [[7 * i % 50] for i in range(6)]
    path = tmp_path / "esc50_fold1.h5"
    make_hdf5(path, names, waves, labels, num_classes=50)
    return path, [lab[0] for lab in labels]


def test_hdf5_single_label_esc50_is_detected_or_declared(esc50_h5, tmp_path):
    import h5py

    path, labels = esc50_h5
    ds = build_dataset(f"hdf5:{path}:num_classes=50", clip_seconds=0.3)
    assert not ds.multilabel and ds.num_classes == 50 and [int(ds[i]["label"]) for i in range(6)] == labels
    assert not build_dataset(f"hdf5:{path}:num_classes=50:multilabel=false", clip_seconds=0.3).multilabel
    multi = build_dataset(f"hdf5:{path}:num_classes=50:multilabel=true", clip_seconds=0.3)
    assert multi.multilabel and torch.nonzero(multi[1]["label"]).flatten().tolist() == [labels[1]]
    # integer targets (one class index per clip): single-label, the classes they use
    ints = tmp_path / "ints.h5"
    make_hdf5(ints, ["a.mp3", "b.mp3", "c.mp3"], [tone(0.4, 500 + 50 * i) for i in range(3)], None)
    with h5py.File(ints, "a") as f:
        f.create_dataset("target", data=np.array([4, 0, 2], dtype=np.int64))
    ids = build_dataset(f"hdf5:{ints}", clip_seconds=0.3)
    assert not ids.multilabel and ids.num_classes == 5 and [int(ids[i]["label"]) for i in range(3)] == [4, 0, 2]
    # multilabel=false on multi-hot rows: one line naming the file and the row, no TypeError
    multi_rows = tmp_path / "multi.h5"
    make_hdf5(multi_rows, ["a.mp3", "b.mp3"], [tone(0.4, 500), tone(0.4, 600)], [[1], [2, 3]], num_classes=10)
    with pytest.raises(DatasetError, match=rf"multilabel=false, but {multi_rows} row 1 has 2 classes"):
        build_dataset(f"hdf5:{multi_rows}:num_classes=10:multilabel=false")
    assert build_dataset(f"hdf5:{multi_rows}:num_classes=10", clip_seconds=0.3).multilabel


def test_cli_finetunes_the_esc50_hdf5_with_cross_entropy_and_accuracy(esc50_h5, tmp_path):
    import json

    from maskspec_fast.train.cli import main

    path, _ = esc50_h5
    out = tmp_path / "ft"
    spec = f"hdf5:{path}:num_classes=50"
    assert main(["finetune", "--data", spec, "--eval-data", spec, *SMALL_FT, "--out", str(out)]) == 0
    ev = json.dumps(json.loads((out / "summary.json").read_text())["eval"])
    assert "accuracy" in ev and "mAP" not in ev
