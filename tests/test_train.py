"""The training CLI end to end on the built-in data, with a very small model so it runs in CI."""
import csv
import shutil

import pytest
import torch

from maskspec_fast import Classifier
from maskspec_fast.train.cli import main

SMALL = ["--set", "embed_dim=64", "--set", "depth=2", "--set", "num_heads=2"]
DECODER = ["--decoder-dim", "64", "--decoder-depth", "1", "--decoder-heads", "2"]
COMMON = ["--workers", "0", "--quiet", "--threads", "2"]


def read_log(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt")
    args = ["pretrain", "--data", "synthetic:96", "--steps", "40", "--batch-size", "12", "--lr", "2e-3",
            "--warmup-steps", "4", "--log-every", "1", "--save-every", "20", "--picture-every", "20",
            "--out", str(out), *SMALL, *DECODER, *COMMON]
    assert main(args) == 0
    return out


def test_pretraining_loss_falls(pretrained):
    losses = [float(r["loss"]) for r in read_log(pretrained / "log.csv")]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert (pretrained / "final" / "model.safetensors").is_file()
    assert (pretrained / "pictures" / "reconstruction_step_00000020.png").is_file()
    assert (pretrained / "curves.png").is_file()


def test_finetune_from_pretrained_beats_chance(pretrained, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", "--init", str(pretrained / "final"), "--data", "synthetic:176:seed=11",
            "--eval-data", "synthetic:88:seed=12", "--steps", "60", "--batch-size", "16", "--lr", "2e-3",
            "--warmup-steps", "5", "--out", str(out), *COMMON]
    assert main(args) == 0
    import json

    summary = json.loads((out / "summary.json").read_text())
    acc, chance = summary["eval"]["accuracy"], summary["eval"]["chance"]
    assert acc > 2.5 * chance, summary["eval"]
    clf = Classifier.from_pretrained(out / "final")
    assert clf.num_classes == round(1 / chance)
    assert main(["eval", "--checkpoint", str(out / "final"), "--data", "synthetic:88:seed=12", *COMMON]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_resume_continues_the_same_run_exactly(tmp_path):
    base = ["pretrain", "--data", "synthetic:40", "--steps", "8", "--batch-size", "6", "--lr", "1e-3",
            "--warmup-steps", "2", "--log-every", "1", "--save-every", "4", "--picture-every", "0",
            *SMALL, *DECODER, *COMMON]
    full = tmp_path / "full"
    assert main([*base, "--out", str(full)]) == 0
    # a second run that "stopped" after step 4: its directory holds only the step-4 checkpoint and the log so far
    cut = tmp_path / "cut"
    (cut / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000004", cut / "checkpoints" / "step_00000004")
    rows = read_log(full / "log.csv")
    with open(cut / "log.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:4])
    assert main([*base, "--out", str(cut), "--resume", "auto"]) == 0
    resumed = read_log(cut / "log.csv")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in rows]  # steps 5..8 identical
    assert [r["lr"] for r in resumed] == [r["lr"] for r in rows]
    a = torch.load(full / "checkpoints" / "step_00000008" / "trainer.pt", weights_only=True)
    b = torch.load(cut / "checkpoints" / "step_00000008" / "trainer.pt", weights_only=True)
    assert a["step"] == b["step"] == 8


def test_interrupted_checkpoint_is_never_loaded(tmp_path):
    from maskspec_fast.train.checkpoint import latest_checkpoint, load_trainer_state

    ck = tmp_path / "checkpoints" / "step_00000010"
    ck.mkdir(parents=True)
    (ck / "trainer.pt").write_bytes(b"truncated")
    assert latest_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        load_trainer_state(ck)


def test_cli_help_and_bad_data(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "pretrain" in capsys.readouterr().out
    assert main(["pretrain", "--data", "folder:/definitely/missing", *COMMON]) == 2
    assert "/definitely/missing" in capsys.readouterr().err
