"""The CLI and the evaluation harness run ONE pre-training procedure: a set pre-trained through ``python -m
maskspec_fast.train pretrain --no-mel-jitter`` and through ``experiments/ssl_eval.py``'s pre-training
(:func:`ssl_eval.pretrain_config` + :func:`ssl_eval.pretrain_on_specs`: the package's ``train()`` on precomputed
log-mel in :class:`~maskspec_fast.data.tensors.SpecTensors`) with the same seed gives the same loss curve, within the
suite's tolerance rule (``tests/tolerance.py``).

As in ``test_finetune_identity``, the two paths differ only in the float32 rounding of the log-mel (per batch in the
CLI, per clip in the harness); the yardstick is the harness's own error, measured by rerunning it on the log-mel
computed in float64 and rounded once to float32."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from precise import log_mel64
from tolerance import assert_within

from maskspec_fast import Model, ModelConfig
from maskspec_fast.data import ESC50, SyntheticSounds
from maskspec_fast.frontend import LogMel

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import ssl_eval  # noqa: E402

CLIP_SECONDS = 1.28
STEPS, BATCH, LR, WARMUP, SEED = 12, 8, 1e-3, 2, 5


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    data = tmp_path_factory.mktemp("pretrain_identity") / "esc50"
    per_class = 5
    SyntheticSounds(per_class * len(SyntheticSounds.CLASS_NAMES), seed=3, clip_seconds=CLIP_SECONDS).write_folder(
        data, per_class, layout="esc50")
    return data


def test_the_harness_resolves_the_cli_settings(tmp_path):
    from maskspec_fast.train import TrainConfig
    from maskspec_fast.train.cli import build_parser

    run = ssl_eval.pretrain_config(STEPS, BATCH, LR, WARMUP, SEED, tmp_path)
    cli = build_parser().parse_args(["pretrain", "--data", "x", "--precision", "fp32"])
    defaults = TrainConfig.from_args(cli)
    assert (run.betas, run.weight_decay, run.clip_grad, run.min_lr) == (
        defaults.betas, defaults.weight_decay, defaults.clip_grad, defaults.min_lr)
    assert (run.steps, run.batch_size, run.lr, run.warmup_steps, run.seed) == (STEPS, BATCH, LR, WARMUP, SEED)


@pytest.mark.slow
def test_cli_and_harness_give_the_same_pretraining_loss_curve(clips, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "maskspec_fast.train", "pretrain", "--data", f"esc50:{clips}", "--clip-seconds",
           str(CLIP_SECONDS), "--preset", "tiny", "--set", "depth=1", "--decoder-depth", "1", "--steps", str(STEPS),
           "--batch-size", str(BATCH), "--lr", str(LR), "--warmup-steps", str(WARMUP), "--seed", str(SEED),
           "--workers", "0", "--device", "cpu", "--threads", "2", "--precision", "fp32", "--save-every", "0",  # --workers 0: identity of two procedures, not the loader
           "--keep", "1", "--log-every", "1", "--no-mel-jitter", "--quiet", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    with open(out / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cli_loss = [float(r["loss"]) for r in rows]
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    config = ModelConfig.from_dict(json.loads((out / "config.json").read_text())["model"])

    # the harness: the same clips in the same order as log-mel tensors (float32 per clip, float64 rounded once)
    ds = ESC50(clips, clip_seconds=CLIP_SECONDS)
    logmel = LogMel().eval()
    waves = [ds[i]["wave"][None] for i in range(len(ds))]
    with torch.no_grad():
        x = torch.cat([logmel(w) for w in waves])
        x_precise = torch.cat([log_mel64(logmel, w) for w in waves]).float()
    assert not torch.equal(x, x_precise)
    curves = []
    for specs in (x, x_precise):
        torch.manual_seed(SEED)  # the CLI seeds torch with --seed before it builds the model
        model = Model(config, fused=True)
        settings = ssl_eval.pretrain_config(STEPS, BATCH, LR, WARMUP, SEED, tmp_path / f"h{len(curves)}")
        curves.append(ssl_eval.pretrain_on_specs(model, specs, settings)["losses"])
    harness, precise = curves
    assert len(harness) == STEPS and harness[-1] < harness[0]
    # each loss is a mean of per-patch squared errors over 256 pixels; log.csv holds 6 decimals
    assert_within(cli_loss, harness, precise, torch.float32, terms=256, decimals=6, name="pre-training loss")
