"""The options users combine, tested together: every source kind x validation split on/off x balanced sampling
on/off x DataLoader workers 0/2 x 1/2 ranks. For each combination, one epoch of the trainer's input
(``make_input``, what ``Trainer`` builds) must train on exactly the fit split, each clip once (balanced sampling:
draws only from the fit split), and never on a validation clip.

Inputs are written by their real producers: sound files and an ESC-50 csv, a manifest, the PaSST/MaskSpec HDF5
layout, ``webdataset.TarWriter`` shards, a Hugging Face parquet file, ``prepare``'s shards, and the built-in
synthetic sounds. The outside report behind this test: a validation split over a streaming source trained on the
validation clips, and balanced sampling over a split was refused.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from audio_sets import encode, hf_table, make_hdf5, make_hf_parquet, make_shards, tone
from tolerance import assert_dtype_bound

from maskspec_fast.data import build_dataset
from maskspec_fast.data.interfaces import MapSource, StreamSource
from maskspec_fast.frontend.logmel import LogMel
from maskspec_fast.train.config import TrainConfig
from maskspec_fast.train.distributed import DistInfo
from maskspec_fast.train.inputs import make_input
from maskspec_fast.train.recipe import FinetuneRecipe, train_val_split

N, CLASSES, RATE, CLIP_S = 16, 4, 16000, 0.2  # 16 clips: val 4 / fit 12 at val_fraction 0.25
KINDS = ("folder", "esc50", "manifest", "hdf5", "webdataset", "hf", "prepared", "synthetic")


def _label(i: int) -> int:
    return i % CLASSES


@pytest.fixture(scope="module")
def specs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("matrix")
    waves = [tone(0.25, 200 + 40 * i, rate=RATE, seed=i) for i in range(N)]
    audio = root / "audio"
    audio.mkdir()
    for i, w in enumerate(waves):
        (audio / f"c{i:02d}.wav").write_bytes(encode(w, "WAV", RATE))
    (root / "meta").mkdir()
    with open(root / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category"])
        w.writerows([f"c{i:02d}.wav", 1, _label(i), f"class{_label(i)}"] for i in range(N))
    (root / "train.csv").write_text("".join(f"audio/c{i:02d}.wav,class{_label(i)}\n" for i in range(N)))
    make_hdf5(root / "set.h5", [f"c{i:02d}" for i in range(N)], waves, [[_label(i)] for i in range(N)],
              num_classes=CLASSES, rate=RATE)
    pattern = make_shards(root / "shards", [(f"c{i:02d}", encode(w, "FLAC", RATE), [_label(i)])
                                           for i, w in enumerate(waves)], per_shard=5)
    names = [f"class{c}" for c in range(CLASSES)]
    make_hf_parquet(root / "hf", hf_table([encode(w, "FLAC", RATE) for w in waves],
                                          [f"c{i:02d}.flac" for i in range(N)], [_label(i) for i in range(N)],
                                          names, rate=RATE))
    from maskspec_fast.data.prepare import prepare

    prepared = prepare(f"esc50:{root}:folds=1", root / "prepared", shard_size=6, progress=False, log=lambda *_: None)
    return {"folder": f"folder:{audio}", "esc50": f"esc50:{root}:folds=1", "manifest": f"manifest:{root / 'train.csv'}",
            "hdf5": f"hdf5:{root / 'set.h5'}:num_classes={CLASSES}", "webdataset": f"webdataset:{pattern}", "hf": f"hf:{root / 'hf'}",
            "prepared": prepared["spec"], "synthetic": f"synthetic:{N}:seed=1"}


def _epoch_ids(source, config: TrainConfig, world: int, local_batch: int) -> list[int]:
    """The parent ids every rank's input yields in epoch 0 (via the batches' ``index``)."""
    ids: list[int] = []
    batches = len(source) // (local_batch * world)
    for rank in range(world):
        info = DistInfo(rank=rank, world_size=world)
        inp = make_input("finetune", source, config, LogMel(), torch.device("cpu"), info, local_batch, batches,
                         lambda *_: None)
        for batch in inp.epoch(0, 0):
            assert batch["wave"].shape == (local_batch, round(CLIP_S * 32000))
            ids += batch["index"].tolist()
    return ids


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("split", [True, False], ids=["val", "noval"])
@pytest.mark.parametrize("balanced", [False, True], ids=["plain", "balanced"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_an_epoch_trains_on_the_fit_split_once(specs, kind, split, balanced, workers, world):
    source = build_dataset(specs[kind], train=True, clip_seconds=CLIP_S, seed=3)
    assert len(source) == N
    assert isinstance(source, StreamSource if source.streaming else MapSource)
    fit, val = train_val_split(source, FinetuneRecipe(val_fraction=0.25 if split else 0.0), seed=5)
    if split:
        assert (len(fit), len(val)) == (12, 4)
        if source.num_classes == CLASSES and not source.multilabel:  # stratified: one validation clip per class
            assert sorted(val.labels().tolist()) == list(range(CLASSES))
        assert type(fit) is type(val) and fit.streaming == source.streaming
    fit_ids = sorted(int(fit[i]["index"]) for i in range(len(fit)))
    val_ids = set() if val is None else {int(val[i]["index"]) for i in range(len(val))}
    assert not set(fit_ids) & val_ids and len(fit_ids) + len(val_ids) == N
    config = TrainConfig(out="unused", seed=7, workers=workers, balanced_sampling=balanced)
    local = 2 if world == 2 else 4  # global batch 4: 12 fit clips -> 3 steps, 16 clips -> 4 steps
    if balanced and source.streaming:
        with pytest.raises(ValueError, match="balanced-sampling needs a map-style"):
            _epoch_ids(fit, config, world, local)
        return
    ids = _epoch_ids(fit, config, world, local)
    assert not set(ids) & val_ids, "a validation clip was trained on"
    if balanced:  # draws with replacement from the fit split's own weights
        assert len(ids) == len(fit_ids) and set(ids) <= set(fit_ids)
    else:
        assert sorted(ids) == fit_ids, "each fit clip exactly once per epoch"


def test_split_weights_are_the_splits_own(specs):
    """Balanced sampling over a split: weights of the fit clips (12), balanced over the fit split's classes."""
    source = build_dataset(specs["manifest"], train=True, clip_seconds=CLIP_S)
    fit, _ = train_val_split(source, FinetuneRecipe(val_fraction=0.25), seed=5)
    w = fit.sample_weights()
    assert w.shape == (12,) and torch.isfinite(w).all()
    assert not source.multilabel  # one label per manifest row: single-label by the one rule (decide_multilabel)
    per_class = torch.zeros(CLASSES, dtype=torch.float64).index_add_(0, fit.labels(), w)
    assert_dtype_bound(per_class, torch.full((CLASSES,), float(per_class.mean()), dtype=torch.float64), torch.float32,
                       terms=len(w), name="weight per class")  # sums of float32 weights


def test_a_bad_clip_is_replaced_from_its_own_split(tmp_path):
    """Skip mode replaces a bad file by another clip of the SAME split, never by a validation clip."""
    from maskspec_fast.data import FileDataset

    files = []
    for i in range(8):
        p = tmp_path / f"c{i}.wav"
        p.write_bytes(encode(tone(0.25, 300 + 50 * i, rate=RATE, seed=i), "WAV", RATE) if i != 2 else b"not audio")
        files.append((str(p), i % 2))
    ds = FileDataset(files, clip_seconds=CLIP_S, on_error="skip")
    fit = ds.subset([0, 2, 5, 6])
    sample = fit[1]  # c2 is bad: the next clip of the subset (5) stands in, not c3 (outside it)
    assert sample["replaced"].endswith("c2.wav") and sample["index"] == 5
    assert Path(sample["path"]).name == "c5.wav"
