"""The training CLI end to end on the built-in data, with a very small model so it runs in CI."""
import copy
import csv
import shutil

import pytest
import torch
from tolerance import assert_within

from maskspec_fast import Classifier
from maskspec_fast.train.cli import main

SMALL = ["--set", "embed_dim=64", "--set", "depth=2", "--set", "num_heads=2"]
DECODER = ["--decoder-dim", "64", "--decoder-depth", "1", "--decoder-heads", "2"]
# --workers 0: these check training results, not input errors; in-process loading keeps each tiny run short.
# Worker processes are covered at the defaults by test_input_matrix.py and test_bad_input_matrix.py.
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


# --------------------------------------------------------------------------------- exact resume, more variants
TINY_CLIPS = ["--clip-seconds", "0.64", "--log-every", "1", "--picture-every", "0", "--quiet", "--threads", "2"]


def _resumed_equals_uninterrupted(tmp_path, base, cut_step, extra_logs=()):
    """Run ``base`` to the end; then a run whose directory holds only checkpoint ``cut_step`` (as if killed after
    that save) plus the whole log (rows past the checkpoint must be dropped) resumes with --resume auto; both
    must agree exactly: every logged number of every step, and the final weights bit for bit."""
    from safetensors.torch import load_file

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*base, "--out", str(full)]) == 0
    name = f"step_{cut_step:08d}"
    shutil.copytree(full / "checkpoints" / name, cut / "checkpoints" / name)
    for log in ("log.csv", *extra_logs):
        shutil.copy(full / log, cut / log)
    assert main([*base, "--out", str(cut), "--resume", "auto"]) == 0
    keys = ("step", "loss", "lr", "grad_norm", "skipped_bad", "nonfinite", "loss_scale", "value", "best")

    def strip(rows):  # everything but the timings
        return [{k: r[k] for k in keys if k in r} for r in rows]

    for log in ("log.csv", *extra_logs):
        assert strip(read_log(cut / log)) == strip(read_log(full / log)), log
    a, b = load_file(str(full / "final" / "model.safetensors")), load_file(str(cut / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    return full, cut


def test_resume_is_exact_with_a_worker_process_across_an_epoch_boundary(tmp_path):
    base = ["pretrain", "--data", "synthetic:30", "--steps", "8", "--batch-size", "6", "--lr", "1e-3",
            "--warmup-steps", "2", "--save-every", "3", "--workers", "1", *SMALL, *DECODER, *TINY_CLIPS]
    full, _ = _resumed_equals_uninterrupted(tmp_path, base, cut_step=3)
    assert [r["epoch"] for r in read_log(full / "log.csv")] == ["0"] * 5 + ["1"] * 3  # 5 batches per epoch


def test_resume_is_exact_for_the_finetuning_recipe(tmp_path):
    """Mixup + SpecAugment + class-balanced sampling + patchout + drop path + periodic evaluation (best kept)."""
    base = ["finetune", "--data", "synthetic:30:seed=5", "--eval-data", "synthetic:11:seed=6", "--eval-every", "2",
            "--steps", "6", "--batch-size", "6", "--lr", "2e-3", "--warmup-steps", "1", "--save-every", "3",
            "--mixup", "0.3", "--freq-mask", "48", "--time-mask", "192", "--balanced-sampling", "--patchout", "5",
            "--drop-path", "0.2", "--workers", "0", *SMALL, *TINY_CLIPS]  # --workers 0: as COMMON (training results, not the loader)
    full, cut = _resumed_equals_uninterrupted(tmp_path, base, cut_step=3, extra_logs=("eval.csv",))
    import json

    best = json.loads((full / "best.json").read_text())
    assert best["metric"] == "accuracy" and best["step"] in (2, 4, 6)
    values = {int(r["step"]): float(r["value"]) for r in read_log(full / "eval.csv")}
    assert best["value"] == pytest.approx(max(values.values()), abs=1e-6)
    assert Classifier.from_pretrained(full / "checkpoints" / "best").num_classes == 11
    assert json.loads((cut / "summary.json").read_text())["best"]["value"] == pytest.approx(best["value"])


def _fp16_autocast_on_cpu() -> str | None:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            y = torch.nn.functional.linear(torch.randn(2, 4), torch.randn(3, 4))
        torch.amp.GradScaler("cpu")
    except (RuntimeError, TypeError, AttributeError) as e:
        return f"fp16 autocast / GradScaler not supported on CPU by this torch: {e}"
    return None if y.dtype == torch.float16 else "CPU autocast ignores float16 in this torch"


def test_fp16_grad_scaler_state_is_checkpointed_and_resumed(tmp_path):
    reason = _fp16_autocast_on_cpu()
    if reason:
        pytest.skip(reason)
    base = ["pretrain", "--data", "synthetic:24", "--steps", "4", "--batch-size", "6", "--lr", "1e-3",
            "--warmup-steps", "1", "--save-every", "2", "--precision", "fp16", "--accum-steps", "2", "--workers", "0",  # --workers 0: as COMMON (training results, not the loader)
            *SMALL, *DECODER, *TINY_CLIPS]
    full, _ = _resumed_equals_uninterrupted(tmp_path, base, cut_step=2)
    state = torch.load(full / "checkpoints" / "step_00000002" / "trainer.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    rows = read_log(full / "log.csv")
    assert all(float(r["loss_scale"]) > 0 and float(r["loss"]) == float(r["loss"]) for r in rows)


def test_nonfinite_losses_stop_with_the_last_checkpoint_or_are_counted(tmp_path):
    from maskspec_fast import Model, ModelConfig
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import NonFiniteLoss, TrainConfig, train
    from maskspec_fast.train.tasks import PretrainTask

    class Flaky(PretrainTask):
        """NaN loss on the 4th and 6th forward passes."""

        calls = 0

        def loss(self, net, spec, labels, **extras):
            Flaky.calls += 1
            out = super().loss(net, spec, labels, **extras)
            return out * float("nan") if Flaky.calls in (4, 6) else out

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    ds = SyntheticSounds(24, clip_seconds=0.64, train=True)

    def args(out, skip):
        return TrainConfig(out=str(out), batch_size=4, lr=1e-3, steps=6, warmup_steps=1, save_every=2, log_every=1,
                           skip_nonfinite=skip, quiet=True, workers=0)

    Flaky.calls = 0
    # the 4th step fails: named step 4, as log.csv counts (rows 1-3 written), not by the 3 steps done
    with pytest.raises(NonFiniteLoss, match=r"at step 4; last good checkpoint: .*step_00000002 \(resume from it "
                                            r"with --resume auto\)"):
        train(Flaky(Model(cfg)), ds, args(tmp_path / "stop", False), LogMel(), torch.device("cpu"))
    assert [r["step"] for r in read_log(tmp_path / "stop" / "log.csv")] == ["1", "2", "3"]
    Flaky.calls = 0
    result = train(Flaky(Model(cfg)), ds, args(tmp_path / "skip", True), LogMel(), torch.device("cpu"),
                   log=lambda *a: None)
    assert result["nonfinite"] == 2 and result["steps"] == 6
    rows = read_log(tmp_path / "skip" / "log.csv")
    assert [r["step"] for r in rows] == [str(i) for i in range(1, 7)]
    assert [int(r["nonfinite"]) for r in rows] == [0, 0, 0, 1, 2, 2]  # NaNs before steps 4 and 5
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)


def test_frontend_choice_and_dali_training_resumes_exactly(tmp_path, capsys):
    base = ["pretrain", "--steps", "1", "--batch-size", "4", *SMALL, *DECODER, *TINY_CLIPS, "--workers", "0"]  # --workers 0: as COMMON (training results, not the loader)
    assert main([*base, "--data", "synthetic:8", "--frontend", "auto", "--out", str(tmp_path / "a")]) == 0
    assert "front end: torch (auto: " in capsys.readouterr().out
    pytest.importorskip("nvidia.dali")
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.dali import dali_available

    ok, why = dali_available()
    if not ok:
        pytest.skip(why)
    assert main([*base, "--data", "synthetic:8", "--frontend", "dali", "--out", str(tmp_path / "b")]) == 2
    assert "file-based" in capsys.readouterr().err
    SyntheticSounds(22, clip_seconds=0.64).write_folder(tmp_path / "wav", 2, layout="class_folders")
    ft = ["finetune", "--data", f"classes:{tmp_path / 'wav'}", "--frontend", "dali", "--steps", "5",
          "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "1", "--save-every", "2", "--workers", "1",
          "--val-fraction", "0", *SMALL, *TINY_CLIPS]
    _resumed_equals_uninterrupted(tmp_path, ft, cut_step=2)  # DALI: the used batches are replayed on resume
    assert "front end: dali (asked for" in capsys.readouterr().out


def test_save_is_atomic_and_debris_of_a_killed_save_is_ignored_then_removed(tmp_path):
    from maskspec_fast import Model, ModelConfig
    from maskspec_fast.train.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint

    m = Model(ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=32, decoder_embed_dim=32, decoder_depth=1,
                          decoder_num_heads=2))
    debris = tmp_path / "checkpoints" / ".tmp_step_00000009_999999"  # a save killed before its rename
    debris.mkdir(parents=True)
    (debris / "trainer.pt").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) is None
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, m, {"step": step}, keep=2)
    save_checkpoint(tmp_path, 4, m, {"step": 4}, keep=2, name="best")
    save_checkpoint(tmp_path, 4, m, {"step": 4}, keep=2, name="best")  # replacing a named checkpoint
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert (tmp_path / "checkpoints" / "best" / "COMPLETE").is_file()
    assert not debris.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "step_00000003", "step_00000004"]


def test_a_run_killed_at_a_random_moment_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a training process at a random moment after its first checkpoint (possibly mid-save), resume it
    with --resume auto, and get the uninterrupted run's log and weights exactly."""
    import os
    import random
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    base = ["pretrain", "--data", "synthetic:24", "--steps", "8", "--batch-size", "4", "--lr", "1e-3",
            "--warmup-steps", "2", "--save-every", "2", "--workers", "0", *SMALL, *DECODER, *TINY_CLIPS]  # --workers 0: as COMMON (training results, not the loader)
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*base, "--out", str(full)]) == 0
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "maskspec_fast.train", *base, "--out", str(cut)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = cut / "checkpoints" / "step_00000002" / "COMPLETE"
    deadline = time.time() + 180
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert first.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
    delay = random.uniform(0.0, 1.5)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    print(f"killed after {delay:.2f} s; checkpoints left: {sorted(p.name for p in (cut / 'checkpoints').iterdir())}")
    assert main([*base, "--out", str(cut), "--resume", "auto"]) == 0
    keys = ("step", "loss", "lr", "grad_norm")
    rows = lambda d: [{k: r[k] for k in keys} for r in read_log(d / "log.csv")]  # noqa: E731
    assert rows(cut) == rows(full)
    a, b = load_file(str(full / "final" / "model.safetensors")), load_file(str(cut / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fused_pretraining_runs_and_reports_backends(tmp_path, capsys):
    args = ["pretrain", "--fused", "--data", "synthetic:24", "--steps", "3", "--batch-size", "6", "--lr", "1e-3",
            "--warmup-steps", "1", "--log-every", "1", "--picture-every", "3", "--out", str(tmp_path),
            *SMALL, *DECODER, *COMMON]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fused=True" in out and "gather_visible" in out and "patch_tokens" in out
    assert "Triton interpreter" in out  # conftest sets TRITON_INTERPRET=1: the kernels ran, not their fallback
    losses = [float(r["loss"]) for r in read_log(tmp_path / "log.csv")]
    assert len(losses) == 3 and all(0 < x < 10 for x in losses)


def test_train_config_and_state_round_trip(tmp_path):
    import argparse

    from maskspec_fast.train import TrainConfig, TrainerState

    cfg = TrainConfig.from_args(argparse.Namespace(steps=7, batch_size=8, lr=None, blr=2.56e-4, data="x", preset="y"))
    assert (cfg.steps, cfg.batch_size) == (7, 8) and abs(cfg.peak_lr() - 8e-6) < 1e-12
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    st = TrainerState(step=3, epoch=1, batch_in_epoch=2, nonfinite=1, best={"metric": "accuracy", "value": 0.5, "step": 2})
    assert TrainerState.from_dict(st.to_dict()) == st
    assert TrainerState.from_dict({**TrainerState().to_dict(), "optimizer": {}, "rng": {}}).best is None


def test_pretraining_uses_the_models_own_mask_ratio(tmp_path):
    from maskspec_fast import Model, ModelConfig
    from maskspec_fast.ops.masking import num_visible
    from maskspec_fast.train.tasks import PretrainTask

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2, mask_ratio=0.5)
    Model(cfg).save_pretrained(tmp_path / "m")
    model = Model.from_pretrained(tmp_path / "m")
    kept = []
    masking = model.ops.masking
    model.ops.masking = lambda noise, keep: kept.append(keep) or masking(noise, keep)  # spy on the visible count
    spec, noise = torch.randn(2, 128, 64), torch.rand(2, 1, model.config.num_patches)
    got = PretrainTask(model).loss(model, spec, None, noise=noise)
    n = model.config.num_patches
    assert kept == [num_visible(n, 0.5)] and num_visible(n, 0.5) != num_visible(n, 0.75)
    # the training step scores masked patches only (another summation order than the full prediction's loss)
    want = model(spec, mask_ratio=0.5, noise=noise[:, 0])[0]
    double = copy.deepcopy(model).double()
    precise = double(spec.double(), mask_ratio=0.5, noise=noise[:, 0].double())[0]
    assert_within(got, want, precise, torch.float32, terms=n * 256, name="masked-only loss")  # a mean of n x 256

def test_early_stopping_and_evaluating_the_starting_point(tmp_path):
    from maskspec_fast import Classifier, ModelConfig
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import TrainConfig, train
    from maskspec_fast.train.tasks import FinetuneTask

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64)
    ds = SyntheticSounds(24, clip_seconds=0.64, train=True)
    scores = iter([0.5, 0.9, 0.8, 0.7, 0.6, 0.95])  # best after the 1st step, then worse 3 times
    seen = []

    def evaluate(model):
        seen.append(1)
        return "accuracy", next(scores), {}

    config = TrainConfig(out=str(tmp_path), batch_size=4, lr=1e-3, steps=20, warmup_steps=1, save_every=0,
                         log_every=1, quiet=True, workers=0, eval_every=1, eval_at_start=True, patience=3)
    result = train(FinetuneTask(Classifier(cfg, ds.num_classes), False), ds, config, LogMel(), torch.device("cpu"),
                   log=lambda *a: None, evaluate=evaluate)
    assert len(seen) == 5 and result["steps"] == 4  # start + 4 steps, stopped 3 evaluations after the best
    assert result["best"] == {"metric": "accuracy", "value": 0.9, "step": 1, "loss": 0.0}


def test_checkpoint_selection_breaks_ties_by_the_evaluation_loss(tmp_path):
    """The trainer selects as the recipe (and ssl_eval.py) does: a later evaluation with the same accuracy but a
    lower loss is the better checkpoint; a higher loss is not."""
    from maskspec_fast import Classifier, ModelConfig
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import TrainConfig, train
    from maskspec_fast.train.tasks import FinetuneTask

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64)
    ds = SyntheticSounds(24, clip_seconds=0.64, train=True)
    results = iter([(0.5, 2.0), (0.5, 1.0), (0.5, 1.5), (0.4, 0.1)])  # (accuracy, loss) at the start, steps 1-3

    def evaluate(model):
        acc, loss = next(results)
        return "accuracy", acc, {"accuracy": acc, "loss": loss}

    config = TrainConfig(out=str(tmp_path), batch_size=4, lr=1e-3, steps=3, warmup_steps=1, save_every=0,
                         log_every=1, quiet=True, workers=0, eval_every=1, eval_at_start=True)
    result = train(FinetuneTask(Classifier(cfg, ds.num_classes), False), ds, config, LogMel(), torch.device("cpu"),
                   log=lambda *a: None, evaluate=evaluate)
    assert result["best"] == {"metric": "accuracy", "value": 0.5, "step": 1, "loss": 1.0}


@pytest.mark.parametrize("refit", [True, False])
def test_finetune_refit_head_changes_only_the_head_of_the_selected_checkpoint(tmp_path, capsys, refit):
    from safetensors.torch import load_file

    out = tmp_path / "ft"
    args = ["finetune", "--data", "synthetic:60:seed=3", "--epochs", "2", "--batch-size", "8", "--val-fraction",
            "0.25", "--pool", "freq_stats", "--refit-head" if refit else "--no-refit-head", "--out", str(out),
            "--workers", "0", *SMALL, *TINY_CLIPS]  # --workers 0: as COMMON (training results, not the loader)
    assert main(args) == 0
    log = capsys.readouterr().out
    best = load_file(str(out / "checkpoints" / "best" / "model.safetensors"))
    final = load_file(str(out / "final" / "model.safetensors"))
    assert set(best) == set(final)
    for k in best:
        same = torch.equal(best[k], final[k])
        assert same != (refit and k.startswith("head.")), k  # with --refit-head only head.* differ
    assert ("head refitted on all 60 training clips" in log) == refit
