"""The CLI and the evaluation harness run ONE fine-tuning procedure: one fold of the built-in set fine-tuned through
``python -m maskspec_fast.train finetune`` and through ``experiments/ssl_eval.py``'s ``finetune`` (precomputed log-mel
in :class:`~maskspec_fast.data.tensors.SpecTensors`) with the same seed gives the same validation curve and the
same selected step."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.data import ESC50, SyntheticSounds
from maskspec_fast.frontend import LogMel
from maskspec_fast.train import FinetuneRecipe

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import ssl_eval  # noqa: E402

CLIP_SECONDS = 1.28
FOLDS = (1, 2, 3, 4)  # the training folds of test fold 5


@pytest.fixture(scope="module")
def built_in(tmp_path_factory):
    """The built-in labeled set as ssl_eval writes it (ESC-50 layout, 5 folds), and a tiny 'pre-trained' encoder."""
    root = tmp_path_factory.mktemp("identity")
    data = root / "esc50"
    per_class = 5
    SyntheticSounds(per_class * len(SyntheticSounds.CLASS_NAMES), seed=7, clip_seconds=CLIP_SECONDS).write_folder(
        data, per_class, layout="esc50")
    torch.manual_seed(0)
    Model(ModelConfig.from_preset("tiny", frames=128, depth=2, decoder_depth=1)).save_pretrained(root / "init")
    return data, root / "init"


def _curve(rows):
    return [(int(r["step"]), round(float(r["value"]), 6), round(float(r["loss"]), 5)) for r in rows]


def test_cli_and_harness_give_the_same_validation_curve(built_in, tmp_path):
    data, init = built_in
    seed = 11
    recipe = FinetuneRecipe(epochs=3, warmup_epochs=1, batch_size=8, eval_every_epochs=1.0, patience=0)
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "maskspec_fast.train", "finetune", "--data",
           f"esc50:{data}:folds={','.join(map(str, FOLDS))}", "--clip-seconds", str(CLIP_SECONDS), "--init", str(init),
           "--out", str(out), "--seed", str(seed), "--workers", "0", "--device", "cpu", "--threads", "2",
           "--epochs", str(recipe.epochs), "--warmup-epochs", str(recipe.warmup_epochs), "--batch-size",
           str(recipe.batch_size), "--eval-every-epochs", "1", "--patience", "0", "--save-every", "0", "--keep", "1",
           "--quiet"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out / "eval.csv", newline="") as f:
        cli_rows = list(csv.DictReader(f))
    assert (out / "config.json").is_file()

    # the harness: the same clips in the same order, as log-mel tensors
    ds = ESC50(data, folds=FOLDS, clip_seconds=CLIP_SECONDS)
    logmel = LogMel()
    with torch.no_grad():
        x = torch.cat([logmel(ds[i]["wave"][None]) for i in range(len(ds))])
    y = torch.as_tensor([int(ds[i]["label"]) for i in range(len(ds))])
    clf = Classifier.from_pretrained(init, num_classes=ds.num_classes, fused=True, drop_path_rate=recipe.drop_path,
                                     frames=x.shape[-1], pool=recipe.pool)
    report = ssl_eval.finetune(clf, x, y, recipe, seed, ds.num_classes)

    harness = [(h["step"], round(h["val_accuracy"], 6), round(h["val_loss"], 5)) for h in report["history"]]
    assert len(harness) >= 3
    assert _curve(cli_rows) == harness
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["step"] == report["best_step"]
