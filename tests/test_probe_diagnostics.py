"""experiments/probe_diagnostics.py: band pooling against a hand computation, and a tiny end-to-end run on a
built-in ESC-50-layout set (the fold bookkeeping of its rows)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tolerance import assert_within

BENCH = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(BENCH))
import probe_diagnostics as pd  # noqa: E402
import ssl_eval  # noqa: E402


def test_band_features_average_adjacent_bins_then_take_time_statistics():
    x = torch.randn(3, 128, 40)
    assert torch.equal(pd.band_features(x, 128), ssl_eval.logmel_features(x))
    f = pd.band_features(x, 8)
    assert f.shape == (3, 16)
    band2 = x[:, 32:48].mean(1)  # bins 32..47 are the third band of 16
    band2_64 = x[:, 32:48].double().mean(1)
    # each band value: a mean over 16 bins, then a mean (or std) over 40 frames
    assert_within(f[:, 2], band2.mean(-1), band2_64.mean(-1), terms=16 + 40, name="band mean")
    assert_within(f[:, 8 + 2], band2.std(-1), band2_64.std(-1), terms=16 + 40, name="band std")
    with pytest.raises(ValueError, match="do not divide"):
        pd.band_features(x, 48)


def test_help_runs():
    out = subprocess.run([sys.executable, str(BENCH / "probe_diagnostics.py"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--bands" in out.stdout and "--pretrained" in out.stdout


def test_tiny_run_writes_a_row_per_setting(tmp_path):
    data_dir = tmp_path / "data"
    root = data_dir / "esc"
    from maskspec_fast.data import SyntheticSounds

    SyntheticSounds(2 * len(SyntheticSounds.CLASS_NAMES), seed=5, clip_seconds=0.64).write_folder(root, 2,
                                                                                                  layout="esc50")
    res = pd.main(["--esc50", str(root), "--folds", "1", "2", "--clip-seconds", "0.64", "--bands", "128", "8",
                   "--l2", "1e-3", "1e-1", "--iters", "10", "--out", str(tmp_path), "--tag", "d", "--threads", "2"])
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert [r["features"] for r in rows if r["kind"] == "bands"] == ["log-mel, 128 bands", "log-mel, 8 bands"]
    l2_rows = [r for r in rows if r["kind"] == "l2"]
    assert [r["l2"] for r in l2_rows] == [1e-3, 1e-3, 1e-1, 1e-1]  # baseline and random encoder per penalty
    for r in rows:
        assert len(r["per_fold"]) == 2 and all(0.0 <= a <= 1.0 for a in r["per_fold"])
        assert r["mean"] == pytest.approx(sum(r["per_fold"]) / 2)
    # the 128-band row is the baseline itself: the same features, the same probe
    assert rows[0]["per_fold"] == l2_rows[0]["per_fold"]
    assert Path(res["plot"]).stat().st_size > 1000
