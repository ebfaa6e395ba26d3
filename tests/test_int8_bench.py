"""benchmarks/int8.py runs end to end on a small fine-tuned-shaped classifier: both variants scored on every clip,
the ranking and speed figures present and in range (the judgement itself is on `make demo`'s model, RESULTS.md)."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from maskspec_fast import Classifier, ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def test_int8_bench_runs(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", frames=64, embed_dim=32, depth=1, num_heads=2)
    Classifier(cfg, 11).save_pretrained(tmp_path / "clf")
    out = tmp_path / "int8.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "int8.py"), "--checkpoint", str(tmp_path / "clf"),
                          "--data", "synthetic:22:seed=2", "--rounds", "2", "--threads", "1",
                          "--results-file", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["clips"] == 22 and 0 <= got["fp32"]["accuracy"] <= 1 and 0 <= got["int8"]["accuracy"] <= 1
    assert 0 <= got["nn_top1_kept"] <= 1 and 0 <= got["nn_overlap10"] <= 1 and got["speedup"] > 0
    assert ("ACCEPTED" in run.stdout) == got["accepted"]
    assert 0 <= got["predictions_changed"] <= 22
    # the judgement is two-sided: a gain beyond the limit is a move too
    moved = abs(got["accuracy_change_points"]) > 0.5
    assert got["accepted"] == (not moved and got["nn_top1_kept"] >= 0.95)
