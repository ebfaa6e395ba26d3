"""Smoke test of the pre-training evaluation experiment (benchmarks/ssl_eval.py) with tiny settings, plus its
pieces that can be checked exactly (linear probe, time-roll augmentation)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
import ssl_eval  # noqa: E402


def test_help_runs():
    out = subprocess.run([sys.executable, str(BENCH / "ssl_eval.py"), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--unlabeled", "--esc50", "--pretrain-steps", "--finetune-steps", "--depth", "--seed", "--out",
                 "--quick"):
        assert flag in out.stdout


def test_quick_run_writes_results(tmp_path):
    result = ssl_eval.main(["--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "data"), "--threads", "2",
                            "--seed", "3"])
    data = json.loads((tmp_path / "ssl_eval.json").read_text())
    assert set(data["accuracy"]) == set(ssl_eval.SETTINGS)
    for s in ssl_eval.SETTINGS:
        folds = data["accuracy"][s]["per_fold"]
        assert list(folds) == ["1", "2"]
        assert all(0.0 <= a <= 1.0 for a in folds.values())
        assert data["accuracy"][s]["mean"] == pytest.approx(sum(folds.values()) / 2)
    assert data["data"]["labeled_clips"] == 2 * len(data["data"]["classes"])
    assert data["environment"]["torch"] == torch.__version__
    curve = data["pretraining"]["curve"]
    assert curve[-1]["step"] == data["settings"]["pretrain_steps"]
    assert curve[-1]["loss"] < curve[0]["loss"]  # even 6 steps lower the masked-patch loss
    assert data["pretraining"]["heldout_loss_pretrained"] < data["pretraining"]["heldout_loss_random_init"]
    for name in ("ssl_eval.png", "ssl_eval_reconstructions.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert list((tmp_path / "data").glob("*/meta/esc50.csv"))  # the built-in labeled set, ESC-50 layout
    assert result["accuracy"] == data["accuracy"]


def test_linear_probe_separates_gaussian_blobs():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    centers = torch.randn(5, 23, generator=g) * 4
    y = torch.arange(5).repeat(20)
    x = centers[y] + torch.randn(100, 23, generator=g)
    yte = torch.arange(5).repeat(7)
    xte = centers[yte] + torch.randn(35, 23, generator=g)
    pred = ssl_eval.linear_probe(x, y, xte, 5, l2=1e-3, iters=100)
    assert (pred == yte).float().mean() > 0.95
    # chance level on labels unrelated to the features (the probe is not a lookup of the test set)
    shuffled = ssl_eval.linear_probe(x, y[torch.randperm(100, generator=g)], xte, 5, l2=1e-3, iters=100)
    assert (shuffled == yte).float().mean() < 0.8


def test_roll_time_is_a_circular_shift_per_clip():
    spec = torch.randn(3, 5, 17)
    g = torch.Generator().manual_seed(1)
    rolled = ssl_eval.roll_time(spec, g)
    shifts = torch.randint(0, 17, (3,), generator=torch.Generator().manual_seed(1))
    for b in range(3):
        assert torch.equal(rolled[b], torch.roll(spec[b], int(shifts[b]), dims=-1))
