"""What a new user meets first on the data side: typed mistakes in data specs, one rule for single- vs multi-label,
``.cls`` beside ``.json`` in WebDataset shards (written by webdataset's own TarWriter), evaluation that never scores a
stand-in for a bad clip, non-regular files named like audio, and errors that keep their type across processes."""
import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_sets import encode, tone

from maskspec_fast import Classifier, ModelConfig
from maskspec_fast.data import DatasetError, build_dataset
from maskspec_fast.frontend.audio import AudioFileError

RATE = 32000


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, timeout=600, env=env)


def _classes(root, per_class=3, seconds=0.32, names=("a", "b")):
    rng = np.random.default_rng(0)
    for c in names:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            sf.write(root / c / f"{c}{k}.wav", rng.uniform(-0.3, 0.3, int(seconds * RATE)).astype(np.float32), RATE,
                     subtype="FLOAT")
    return root


# ------------------------------------------------------------------------------------------ spec options
@pytest.mark.parametrize("spec, option", [
    ("classes:{d}:sed=3", "sed"), ("synthetic:8:sed=3", "sed"), ("esc50:{d}:fold=5", "fold"),
    ("hf:{d}:splt=test", "splt"), ("folder:{d}:clip_secs=2", "clip_secs"),
])
def test_unknown_spec_option_is_one_line(tmp_path, spec, option):
    spec = spec.format(d=_classes(tmp_path / "d"))
    with pytest.raises(DatasetError) as e:
        build_dataset(spec)
    msg = str(e.value)
    assert "\n" not in msg and spec in msg and repr(option) in msg and "known options:" in msg


@pytest.mark.parametrize("spec, option, expected", [
    ("synthetic:8:seed=abc", "seed", "an integer"), ("synthetic:8:labeled=maybe", "labeled", "true or false"),
    ("synthetic:8:clip_seconds=long", "clip_seconds", "a number"),
])
def test_bad_spec_value_names_the_option(spec, option, expected):
    with pytest.raises(DatasetError, match=f"{option}=.* must be {expected}"):
        build_dataset(spec)


def test_typed_spec_mistake_through_the_cli_at_defaults(tmp_path):
    root = _classes(tmp_path / "d")
    run = _cli("maskspec_fast.train", "pretrain", "--data", f"classes:{root}:sed=3", "--steps", "1",
               "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert "'sed'" in line and "known options:" in line and "seed" in line


def test_spec_values_are_converted_by_the_declared_type(tmp_path):
    ds = build_dataset("synthetic:8:seed=3:labeled=0:clip_seconds=1")  # labeled=0: documented spelling of false
    assert ds.seed == 3 and (ds.labels() == -1).all() and ds.clip_seconds == 1.0
    two, one = (build_dataset(f"esc50:{_esc50(tmp_path)}:folds={f}") for f in ("1,2", "1"))
    assert len(two) == 2 * len(one) == 22


def _esc50(tmp_path):
    from maskspec_fast.data import SyntheticSounds

    root = tmp_path / "esc"
    if not root.exists():
        SyntheticSounds(11 * 5, seed=1, clip_seconds=0.32).write_folder(root, 5, layout="esc50")
    return root


# ------------------------------------------------------------------------------------------ one label rule
def _manifest(tmp_path, rows) -> str:
    p = tmp_path / "m.jsonl"
    _classes(tmp_path / "audio", per_class=2)
    files = sorted(str(f) for f in (tmp_path / "audio").rglob("*.wav"))
    p.write_text("".join(json.dumps({"path": f, "labels": labs}) + "\n" for f, labs in zip(files, rows)))
    return str(p)


def test_manifest_with_one_label_per_clip_is_single_label(tmp_path):
    ds = build_dataset(f"manifest:{_manifest(tmp_path, [['dog'], ['cat'], ['dog'], ['cat']])}", clip_seconds=0.32)
    assert not ds.multilabel and ds.labels().tolist() == [1, 0, 1, 0]
    multi = build_dataset(f"manifest:{_manifest(tmp_path, [['dog'], ['cat'], ['dog'], ['cat']])}:multilabel=true",
                          clip_seconds=0.32)
    assert multi.multilabel and multi.labels().shape == (4, 2)


def test_manifest_with_several_labels_is_multilabel_and_false_is_refused(tmp_path):
    rows = [["dog", "cat"], ["cat"], ["dog"], ["cat"]]
    assert build_dataset(f"manifest:{_manifest(tmp_path, rows)}", clip_seconds=0.32).multilabel
    with pytest.raises(DatasetError, match="multilabel=false, but clip 0 has 2 classes"):
        build_dataset(f"manifest:{_manifest(tmp_path, rows)}:multilabel=false", clip_seconds=0.32)


@pytest.mark.parametrize("kind", ["classes", "esc50"])
def test_multilabel_option_on_single_label_layouts(tmp_path, kind):
    root = _classes(tmp_path / "d") if kind == "classes" else _esc50(tmp_path)
    ds = build_dataset(f"{kind}:{root}:multilabel=true", clip_seconds=0.32)
    assert ds.multilabel and ds.labels().dim() == 2 and (ds.labels().sum(1) == 1).all()
    assert not build_dataset(f"{kind}:{root}:multilabel=false", clip_seconds=0.32).multilabel


# ------------------------------------------------------------------------------------------ .cls + .json
def _tar(folder, samples):
    """Shards written by webdataset's own TarWriter: ``(key, audio bytes, {member: value})``."""
    import webdataset as wds

    folder.mkdir(parents=True)
    with open(folder / "shard-000000.tar", "wb") as fh:
        w = wds.TarWriter(fh, mtime=0)
        for key, audio, members in samples:
            w.write({"__key__": key, "wav": audio, **members})
        w.close()
    return str(folder / "shard-000000.tar")


def test_cls_and_json_names_become_one_label_space(tmp_path):
    names = {0: "speech", 1: "noise", 2: "tone"}
    samples = [(f"k{i}", encode(tone(0.4, 300 + 50 * i), "WAV"), {"cls": i % 3, "json": {"labels": [names[i % 3]]}})
               for i in range(6)]
    ds = build_dataset(f"webdataset:{_tar(tmp_path / 's', samples)}", clip_seconds=0.3)
    assert ds.class_names == ["speech", "noise", "tone"] and not ds.multilabel
    assert ds.labels().tolist() == [0, 1, 2, 0, 1, 2]


def test_cls_and_json_that_disagree_are_refused_in_one_line(tmp_path):
    samples = [("k0", encode(tone(0.4, 300), "WAV"), {"cls": 2, "json": {"labels": ["tone"]}}),
               ("k1", encode(tone(0.4, 400), "WAV"), {"cls": 2, "json": {"labels": ["noise"]}})]
    with pytest.raises(DatasetError, match=r"k1: \.cls 2 beside \.json \['noise'\] disagrees"):
        build_dataset(f"webdataset:{_tar(tmp_path / 's', samples)}", clip_seconds=0.3)


def test_cls_and_json_with_the_same_index_agree(tmp_path):
    samples = [(f"k{i}", encode(tone(0.4, 300), "WAV"), {"cls": i % 2, "json": {"labels": [i % 2]}}) for i in range(4)]
    ds = build_dataset(f"webdataset:{_tar(tmp_path / 's', samples)}", clip_seconds=0.3)
    assert ds.num_classes == 2 and not ds.multilabel and ds.labels().tolist() == [0, 1, 0, 1]


# ------------------------------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    torch.manual_seed(0)
    Classifier(ModelConfig.from_preset("tiny", frames=32, embed_dim=32, depth=1, num_heads=2), 2).save_pretrained(
        root / "clf")
    return root / "clf"


def test_eval_skip_bad_files_leaves_the_clip_out_and_names_it(tmp_path, clf_dir):
    root = _classes(tmp_path / "d", per_class=6)
    (root / "a" / "broken.wav").write_bytes(b"garbage" * 20)
    out = tmp_path / "ev"
    run = _cli("maskspec_fast.train", "eval", "--checkpoint", str(clf_dir), "--data", f"classes:{root}",
               "--clip-seconds", "0.32", "--skip-bad-files", "--out", str(out), "--quiet")
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["clips"] == 12 and metrics["omitted"] == 1  # 12 readable files scored, the broken one not
    with open(out / "bad_files.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(root / "a" / "broken.wav")]
    assert "over 12 clips" in run.stdout and "1 bad file left out" in run.stdout


def test_predict_scores_each_readable_clip_once_in_a_subset(tmp_path, clf_dir):
    """The validation split (a subset) in skip mode: its bad clip is left out, no other clip stands in."""
    from maskspec_fast.frontend import LogMel
    from maskspec_fast.train.evaluation import predict

    root = _classes(tmp_path / "d", per_class=4)
    (root / "b" / "b1.wav").write_bytes(b"")  # empty
    ds = build_dataset(f"classes:{root}", clip_seconds=0.32, on_error="skip")
    sub = ds.subset([1, 2, 5, 6])  # b1.wav is id 5 in sorted order (a0..a3, b0..b3)
    clf = Classifier.from_pretrained(clf_dir)
    for workers in (0, 2):
        got = predict(clf, sub, LogMel(), torch.device("cpu"), batch_size=3, workers=workers)
        assert got.index.tolist() == [0, 1, 3] and len(got.logits) == 3
        assert [(i, p) for i, p, _ in got.omitted] == [(2, str(root / "b" / "b1.wav"))]


# ------------------------------------------------------------------------------------------ files, errors
def test_fifo_named_like_audio_is_reported_not_dropped(tmp_path):
    root = _classes(tmp_path / "d")
    os.mkfifo(root / "a" / "x.wav")
    ds = build_dataset(f"classes:{root}", clip_seconds=0.32)
    assert str(root / "a" / "x.wav") in ds.paths
    with pytest.raises(AudioFileError, match=r"x\.wav: not a regular file \(a FIFO\)"):
        ds[ds.paths.index(str(root / "a" / "x.wav"))]


def test_audio_file_error_survives_pickling_and_a_message_only_rebuild():
    err = AudioFileError("/data/a b.wav", "corrupt or undecodable audio (x)")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is AudioFileError and (back.path, back.problem) == (err.path, err.problem)
    # what torch's DataLoader does with a worker's error when it is not carried: type(err)(text)
    text = (f"Caught AudioFileError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            f"  File ...\n{AudioFileError.__module__}.AudioFileError: {err}\n")
    rebuilt = AudioFileError(text)
    assert str(rebuilt) == str(err) and rebuilt.problem == err.problem


def test_prepare_with_a_bad_spec_leaves_no_folder(tmp_path):
    out = tmp_path / "prepared"
    run = _cli("maskspec_fast.data", "prepare", f"classes:{_classes(tmp_path / 'd')}:sed=1", str(out))
    assert run.returncode == 2 and "'sed'" in run.stderr and "Traceback" not in run.stderr
    assert not out.exists()


def test_short_files_are_said_to_be_mostly_padding(tmp_path):
    """0.32-s files at a 1.28-s clip: 75 % of every clip is zeros; the run says so once, at the default workers."""
    root = _classes(tmp_path / "d", per_class=4)
    run = _cli("maskspec_fast.train", "pretrain", "--data", f"classes:{root}", "--clip-seconds", "1.28", "--steps",
               "1", "--batch-size", "4", "--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2",
               "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2", "--picture-every", "0",
               "--quiet", "--out", str(tmp_path / "o"))
    assert run.returncode == 0, run.stderr[-2000:]
    said = [ln for ln in (run.stdout + run.stderr).splitlines() if "zero padding" in ln]
    assert len(said) == 1 and "75 %" in said[0] and "--clip-seconds" in said[0]


def _package_errors():
    """Every exception class the package defines (walked, so a new one is covered without editing this test)."""
    import importlib
    import pkgutil

    import maskspec_fast

    found = {}
    for info in pkgutil.walk_packages(maskspec_fast.__path__, "maskspec_fast."):
        if info.name.endswith("__main__") or "xares" in info.name or "hear" in info.name:
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:
            continue  # an optional part not installed here
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__.startswith("maskspec_fast"):
                found[f"{obj.__module__}.{obj.__name__}"] = obj
    return found


def test_every_package_error_crosses_a_process_boundary_whole():
    """Pickling (what a pool or a DataLoader worker does) keeps the type and the message, and ``type(e)(text)`` (how
    torch re-raises a worker's error) builds the same type instead of falling back to RuntimeError."""
    errors = _package_errors()
    assert {"maskspec_fast.frontend.errors.AudioFileError", "maskspec_fast.data.errors.DatasetError"} <= set(errors)
    for name, cls in errors.items():
        err = cls("/data/x.wav", "a problem") if cls is AudioFileError else cls("/data/x.wav: a problem")
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is cls and str(back) == str(err), name
        assert type(cls(f"Caught {cls.__name__} in DataLoader worker process 0.\n{name}: {err}")) is cls, name
