"""The training fault matrix (issue 21), as a user meets each fault: through the CLI on tiny synthetic runs.

kill -9 inside a checkpoint write, a full disk during a save, a hostile ``trainer.pt``, malformed ``config.json``,
a model size changed on resume, integer or misshapen weights, a blown-up lr (a finite loss with a non-finite
gradient norm), non-finite losses with and without ``--skip-nonfinite``, ``--keep 1``. Every refusal is one line
that names the file (or the folder) and the problem; no run ever names a checkpoint holding NaN/Inf "last good".
(A SIGKILL at a random moment of a run is ``test_train.py::test_a_run_killed_at_a_random_moment...``.)
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import DECODER, SMALL, TINY_CLIPS, read_log

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.serialization import CheckpointError
from maskspec_fast.train.checkpoint import checkpoint_nonfinite, list_checkpoints
from maskspec_fast.train.cli import main

ROOT = Path(__file__).resolve().parents[1]
# --workers 0: these faults are the trainer's and the checkpoints', not the loader's; a worker process would only add
# its start-up time to every run
BASE = ["pretrain", "--data", "synthetic:24", "--batch-size", "4", "--warmup-steps", "1", "--workers", "0",
        *SMALL, *DECODER, *TINY_CLIPS]
# lr 1e4 in fp32: step 1 is finite, its Adam update moves the weights by ~1e4, and step 2's loss is finite (~3e19)
# while its gradient norm is NaN/Inf -- the blow-up of the issue, with a fixed seed (the same from lr 3e3 to 3e4)
BLOWUP = [*BASE, "--lr", "1e4", "--warmup-steps", "0", "--save-every", "1"]
TINY_CFG = dict(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_depth=1,
                decoder_num_heads=2)


def _error_line(capsys) -> str:
    """The CLI's stderr: exactly one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _all_checkpoints_finite(out: Path) -> list[str]:
    names = [p.name for p in list_checkpoints(out)]
    for p in list_checkpoints(out):
        assert checkpoint_nonfinite(p) == [], p
    return names


# ------------------------------------------------------------------------------------------- non-finite rule
def _advice(err: str) -> tuple[list[dict], Path | None]:
    """The checkpoints a non-finite stop lists (name, loss, problem) and the folder its advice resumes from."""
    import re

    listed = [{"name": m[0], "loss": float(m[1]), "problem": m[2]}
              for m in re.findall(r"(step_\d{8}) \(loss ([-+.\deinf]+)(?:, ([^()]*?))?\)", err)]
    where = re.search(r"--resume (\S+?);", err)
    return listed, Path(where.group(1)) if where else None


@pytest.mark.parametrize("keep", [1, 3])
def test_a_blown_up_lr_names_no_checkpoint_when_each_one_diverged_and_starting_again_continues(tmp_path, capsys,
                                                                                                keep):
    """lr 1e4: the one checkpoint (step 1) is finite, but step 2 ran on its weights with a loss of ~3e19 and a
    non-finite gradient norm: resuming from it repeated the same stop at any lr. It is named as diverged, and the
    advice is to start again with a lower --lr; following it, the run gets past step 2."""
    out = tmp_path / "run"
    args = [*BLOWUP, "--steps", "6", "--keep", str(keep), "--out", str(out)]
    assert main(args) == 3
    err = _error_line(capsys)
    assert "non-finite gradient norm" in err and "at step 2;" in err, err
    assert f"no good checkpoint exists in {out / 'checkpoints'}" in err, err
    listed, where = _advice(err)
    assert [c["name"] for c in listed] == ["step_00000001"] and where is None, err
    assert listed[0]["problem"] == "diverged, step 2 failed on these weights" and listed[0]["loss"] > 1e10, err
    assert "start again with an --lr below 1e+04" in err, err
    assert _all_checkpoints_finite(out) == ["step_00000001"]  # the poisoned update was never applied nor saved
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == ["1"]  # the message's step 2 is the row the failed step would have been
    # --resume auto no longer takes the diverged checkpoint (the stop marked it): it starts again
    from maskspec_fast.train.checkpoint import last_good_checkpoint

    assert last_good_checkpoint(out) is None
    # the advice: start again with a lower lr
    assert main([*BASE, "--steps", "6", "--keep", str(keep), "--save-every", "1", "--lr", "1e-3", "--out",
                 str(out)]) == 0
    assert [r["step"] for r in read_log(out / "log.csv")] == [str(i) for i in range(1, 7)]


def test_a_diverged_checkpoint_is_not_good_and_resuming_from_the_named_one_continues(tmp_path, capsys):
    """A healthy run (lr 1e-3) continued with --lr 1e4: step 5's update blows the weights up; checkpoint
    step_00000005 is finite, but step 6 ran on it with a loss of ~1e19 (and a non-finite gradient norm), so
    resuming from it repeated the stop whatever the lr. The message says the loss diverged, lists the checkpoints
    with the loss on their weights and names step_00000004; following it, --resume THAT --lr 1e-3, the run goes
    past step 6 to the end. (A blow-up from scratch is chaotic for a few steps, its step of Inf depends on the
    rounding of each kernel; one update at lr 1e4 is not.)"""
    out = tmp_path / "run"
    # --save-every 1: a checkpoint at every step, so the one the failing step ran on and the ones before it exist
    args = [*BASE, "--lr", "1e-3", "--save-every", "1", "--out", str(out)]
    assert main([*args, "--steps", "4"]) == 0
    capsys.readouterr()
    assert main([*args, "--steps", "8", "--resume", "auto", "--lr", "1e4"]) == 3
    err = _error_line(capsys)
    assert "non-finite gradient norm" in err and " at step 6;" in err, err
    assert "the loss diverged (above 100x the start loss)" in err and "an --lr below 1e+04" in err, err
    assert [r["step"] for r in read_log(out / "log.csv")] == ["1", "2", "3", "4", "5"]  # step 6 = the next row
    listed, where = _advice(err)
    start = float(read_log(out / "log.csv")[0]["loss"])
    assert where == out / "checkpoints" / "step_00000004", err
    assert [c["name"] for c in listed] == ["step_00000003", "step_00000004", "step_00000005"], err  # --keep 3
    assert all(not c["problem"] and c["loss"] < 10 * start for c in listed[:2]), err
    assert listed[2]["problem"] == "diverged, step 6 failed on these weights" and listed[2]["loss"] > 1e6, err
    assert _all_checkpoints_finite(out)[-1] == "step_00000005"  # finite, yet not good
    from maskspec_fast.train.checkpoint import last_good_checkpoint

    assert last_good_checkpoint(out) == where  # --resume auto agrees with the advice now
    # the advice, literally: --resume THAT, with a lower --lr
    assert main([*args, "--steps", "8", "--resume", str(where), "--lr", "1e-3"]) == 0
    assert f"resumed from {where} at step 4" in capsys.readouterr().out
    rows = read_log(out / "log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert all(float(r["loss"]) < 10 * start and float(r["grad_norm"]) < float("inf") for r in rows)
    assert _all_checkpoints_finite(out)[-1] == "step_00000008"


def test_keep_spares_the_newest_good_checkpoint_and_a_resumed_run_drops_the_abandoned_ones(tmp_path):
    from maskspec_fast.train.checkpoint import save_checkpoint

    m = Model(ModelConfig(**TINY_CFG))
    good = tmp_path / "checkpoints" / "step_00000001"
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, m, {"step": step}, keep=2, protect=good)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000003", "step_00000004"]
    # resumed from step 1 (e.g. as a diverged run's message advised): its step-2 save removes 3 and 4, the
    # continuation it abandoned, so --keep counts this run's checkpoints
    save_checkpoint(tmp_path, 2, m, {"step": 2}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000001", "step_00000002"]


def test_no_checkpoint_yet_says_that_none_exists(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*BLOWUP, "--steps", "6", "--save-every", "10", "--out", str(out)]) == 3
    err = _error_line(capsys)
    assert "no good checkpoint exists" in err and str(out / "checkpoints") in err, err


def test_resume_auto_passes_over_a_poisoned_checkpoint(tmp_path, capsys):
    """Checkpoints with NaN weights written by earlier versions are never resumed from."""
    out = tmp_path / "run"
    args = [*BASE, "--lr", "1e-3", "--steps", "4", "--save-every", "2", "--out", str(out)]
    assert main(args) == 0
    poisoned = out / "checkpoints" / "step_00000004" / "model.safetensors"
    w = load_file(str(poisoned))
    w["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    save_file(w, str(poisoned))
    capsys.readouterr()
    assert main([*args, "--steps", "5", "--resume", "auto"]) == 0
    log = capsys.readouterr().out
    assert "step_00000004 holds non-finite values" in log and "passed over" in log
    assert f"resumed from {out / 'checkpoints' / 'step_00000002'} at step 2" in log


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward: a finite loss with a non-finite gradient norm."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def _train_in_process(tmp_path, task, **kw):
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import TrainConfig, train

    cfg = dict(out=str(tmp_path), batch_size=4, lr=1e-3, steps=4, warmup_steps=1, save_every=2, log_every=1,
               quiet=True, workers=0)
    return train(task, SyntheticSounds(24, clip_seconds=0.64, train=True), TrainConfig(**{**cfg, **kw}), LogMel(),
                 torch.device("cpu"), log=lambda *a: None)


@pytest.mark.parametrize("accum", [1, 2])
def test_a_nonfinite_gradient_with_a_finite_loss_is_never_applied(tmp_path, accum):
    """Micro-batch 1 of forward passes 3 and 4 gets an infinite gradient (finite loss); with gradient
    accumulation the other micro-batch is finite: the accumulated step is skipped all the same."""
    from maskspec_fast.train import NonFiniteLoss
    from maskspec_fast.train.tasks import PretrainTask

    seen = {"calls": 0, "weights": []}

    class Spiky(PretrainTask):
        def loss(self, net, spec, labels, **extras):
            seen["calls"] += 1
            step = (seen["calls"] - 1) // accum  # the optimizer step this micro-batch belongs to
            first = (seen["calls"] - 1) % accum == 0
            seen["weights"].append(net.decoder_pred.weight.detach().clone())
            out = super().loss(net, spec, labels, **extras)
            return _InfGrad.apply(out) if step in (2, 3) and first else out

    result = _train_in_process(tmp_path / "skip", Spiky(Model(ModelConfig(**TINY_CFG))), accum_steps=accum,
                               skip_nonfinite=True)
    assert result["steps"] == 4 and result["nonfinite"] == 2
    w = seen["weights"][::accum]  # the weights each optimizer step started from
    assert torch.equal(w[2], w[3]) and torch.equal(w[3], w[4])  # the two skipped steps changed nothing
    assert not torch.equal(w[1], w[2])
    rows = read_log(tmp_path / "skip" / "log.csv")
    assert all(float(r["grad_norm"]) < float("inf") for r in rows) and rows[-1]["nonfinite"] == "2"
    _all_checkpoints_finite(tmp_path / "skip")
    seen.update(calls=0, weights=[])
    with pytest.raises(NonFiniteLoss, match=r"non-finite gradient norm \(.*loss .*\) at step 3; no good checkpoint exists .*step_00000002 "
                                            r"\(loss .*, step 3 failed on these weights\)"):
        _train_in_process(tmp_path / "stop", Spiky(Model(ModelConfig(**TINY_CFG))), accum_steps=accum)


def test_nonfinite_losses_in_a_row_stop_at_the_cap(tmp_path):
    from maskspec_fast.train import NonFiniteLoss
    from maskspec_fast.train.tasks import PretrainTask

    class AlwaysNaN(PretrainTask):
        def loss(self, net, spec, labels, **extras):
            return super().loss(net, spec, labels, **extras) * float("nan")

    with pytest.raises(NonFiniteLoss, match=r"at step 1: 6 consecutive non-finite steps, more than "
                                            r"--max-nonfinite-skips 5; no good checkpoint exists"):
        _train_in_process(tmp_path, AlwaysNaN(Model(ModelConfig(**TINY_CFG))), skip_nonfinite=True,
                          max_nonfinite_skips=5)


def test_a_nonfinite_state_is_never_saved(tmp_path):
    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import NonFiniteLoss, TrainConfig, Trainer
    from maskspec_fast.train.tasks import PretrainTask

    config = TrainConfig(out=str(tmp_path), batch_size=4, lr=1e-3, steps=1, quiet=True, workers=0)
    trainer = Trainer(PretrainTask(Model(ModelConfig(**TINY_CFG))), SyntheticSounds(8, clip_seconds=0.64), config,
                      LogMel(), torch.device("cpu"), log=lambda *a: None)
    trainer.save()
    with torch.no_grad():
        trainer.model.norm.weight[3] = float("inf")
    trainer.state.step = 1
    with pytest.raises(NonFiniteLoss, match=r"non-finite model/optimizer state at step 1 \(1 tensors, e.g. "
                                            r"norm.weight\); checkpoint step_00000001 not written; last good "
                                            r"checkpoint: .*step_00000000"):
        trainer.save()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000000"]


def test_fp16_overflow_is_left_to_the_grad_scaler(tmp_path):
    """An fp16 gradient that overflows under the loss scale (a start scale of 2**40 overflows at once) is the
    grad scaler's skip, not ours: the run goes on, nothing is counted as non-finite, the scale drops."""
    from test_train import _fp16_autocast_on_cpu

    from maskspec_fast.data import SyntheticSounds
    from maskspec_fast.frontend.logmel import LogMel
    from maskspec_fast.train import TrainConfig, Trainer
    from maskspec_fast.train.tasks import PretrainTask

    reason = _fp16_autocast_on_cpu()
    if reason:
        pytest.skip(reason)
    config = TrainConfig(out=str(tmp_path), batch_size=4, lr=1e-3, steps=3, warmup_steps=1, log_every=1,
                         precision="fp16", quiet=True, workers=0)
    trainer = Trainer(PretrainTask(Model(ModelConfig(**TINY_CFG))), SyntheticSounds(24, clip_seconds=0.64), config,
                      LogMel(), torch.device("cpu"), log=lambda *a: None)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    result = trainer.run()
    rows = read_log(tmp_path / "log.csv")
    assert result["steps"] == 3 and result["nonfinite"] == 0 and [r["nonfinite"] for r in rows] == ["0"] * 3
    assert float(rows[-1]["loss_scale"]) < 2.0**40  # the scaler saw the overflow and backed off


# ------------------------------------------------------------------------------------------------ full disk
def _namespace_for_a_tmpfs() -> list[str] | str:
    """The command prefix that runs a shell in a private mount namespace where it may mount a tmpfs (root: a
    plain mount namespace; others: a user + mount namespace), or why there is none."""
    if not shutil.which("unshare"):
        return "unshare is not installed"
    prefix = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    p = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    return prefix if p.returncode == 0 else f"{' '.join(prefix)} is refused here ({p.stderr.strip()})"


# A checkpoint of this run is ~2.33 MB: model.safetensors 0.77 MB + trainer.pt 1.56 MB. In 3 MB the second
# checkpoint's safetensors file runs out of space; in 3.7 MB it fits, and torch's writer of trainer.pt runs out
# (it used to report "unexpected pos 633088 vs 632976" instead of a full disk).
@pytest.mark.parametrize("size, writer", [("3m", "safetensors"), ("3700k", "torch.save")])
def test_a_full_disk_during_a_checkpoint_save_is_one_line_and_keeps_the_older_checkpoints(tmp_path, size, writer):
    """A real full disk: a small tmpfs (mounted in a private mount namespace) holds the first checkpoint, the
    second does not fit."""
    prefix = _namespace_for_a_tmpfs()
    if isinstance(prefix, str):
        pytest.skip(f"{prefix}; test_a_torch_writer_failure_on_a_full_disk_says_so covers the message mapping")
    out, kept = tmp_path / "small_disk", tmp_path / "copy"
    out.mkdir()
    run = [sys.executable, "-m", "maskspec_fast.train", *BASE, "--lr", "1e-3", "--steps", "6", "--save-every", "2",
           "--out", str(out)]
    script = (f"mount -t tmpfs -o size={size} tmpfs {out} || exit 99; {' '.join(map(str, run))}; rc=$?; "
              f"cp -a {out} {kept}; exit $rc")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([*prefix, "sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    err = p.stderr.strip().splitlines()
    assert p.returncode == 4, p.stderr[-2000:]
    assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert err[0] == f"error: {out / 'checkpoints'}: cannot write checkpoint step_00000004: no space left on device", err
    names = sorted(q.name for q in (kept / "checkpoints").iterdir())
    assert names == ["step_00000002"], names  # no partial .tmp_* left; the earlier checkpoint whole
    assert checkpoint_nonfinite(kept / "checkpoints" / "step_00000002") == []


def test_a_failed_save_removes_its_temporary_directory(tmp_path, monkeypatch):
    """The same rule where no small file system can be made: the writer fails with ENOSPC half-way."""
    import errno

    from maskspec_fast.serialization import CheckpointWriteError
    from maskspec_fast.train import checkpoint

    m = Model(ModelConfig(**TINY_CFG))
    checkpoint.save_checkpoint(tmp_path, 1, m, {"step": 1})
    real_save = torch.save

    def full(obj, fh, *a, **k):
        real_save(obj, fh, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(CheckpointWriteError, match="cannot write checkpoint step_00000002: no space left on device"):
        checkpoint.save_checkpoint(tmp_path, 2, m, {"step": 2})
    assert sorted(q.name for q in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]


@pytest.mark.parametrize("free", [0, 10**12])
def test_a_torch_writer_failure_on_a_full_disk_says_so(tmp_path, monkeypatch, free):
    """torch's zip writer reports a full disk as "unexpected pos" (what a real tmpfs showed, injected here for
    machines that cannot mount one): with no room left for the rest of trainer.pt the message says the disk is
    full; with room left it is some other failure and keeps torch's words."""
    from maskspec_fast.serialization import CheckpointWriteError
    from maskspec_fast.train import checkpoint

    m = Model(ModelConfig(**TINY_CFG))
    real_save, real_statvfs = torch.save, os.statvfs

    def short_write(obj, fh, *a, **k):
        if isinstance(fh, (str, os.PathLike)) or not hasattr(fh, "name"):  # the size probe writes to memory
            return real_save(obj, fh, *a, **k)
        fh.write(b"PK" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 898688 vs 898576")

    class Stat:
        def __init__(self, real):
            self.f_frsize, self.f_bavail = real.f_frsize, free // real.f_frsize

    monkeypatch.setattr(checkpoint.torch, "save", short_write)
    monkeypatch.setattr(checkpoint.os, "statvfs", lambda p: Stat(real_statvfs(p)))
    want = "no space left on device" if free == 0 else r"\[enforce fail at inline_container.cc:672\] . unexpected pos"
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint step_00000002: {want}"):
        checkpoint.save_checkpoint(tmp_path, 2, m, {"step": 2, "moments": torch.zeros(1000)})
    assert not any((tmp_path / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------ kill -9 inside a write
KILLER = """
import os, signal, sys
import torch
from maskspec_fast.train import checkpoint
point, real = sys.argv[1], torch.save
saves = {"n": 0}
def save(obj, fh, *a, **k):
    saves["n"] += 1
    if saves["n"] == 2 and point == "trainer":  # half of the second checkpoint's trainer.pt on disk
        real(obj, fh, *a, **k)
        fh.flush()
        fh.truncate(fh.tell() // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real(obj, fh, *a, **k)
    if saves["n"] == 2 and point == "marker":  # all but the COMPLETE marker
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.torch.save = save
from maskspec_fast.train.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert main([*BASE, "--lr", "1e-3", "--steps", "6", "--save-every", "2", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("point", ["trainer", "marker"])
def test_kill_9_inside_a_checkpoint_write_then_resume_is_identical(tmp_path, uninterrupted, point):
    out = tmp_path / "cut"
    args = [*BASE, "--lr", "1e-3", "--steps", "6", "--save-every", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", KILLER, point, *args], cwd=ROOT, env=env, capture_output=True)
    assert p.returncode == -9, p.stderr.decode()[-2000:]
    left = sorted(q.name for q in (out / "checkpoints").iterdir())  # the killed save's debris, never loaded
    assert len(left) == 2 and left[0].startswith(".tmp_step_00000004_") and left[1] == "step_00000002", left
    assert main([*args, "--resume", "auto"]) == 0
    keys = ("step", "loss", "lr", "grad_norm")
    rows = lambda d: [{k: r[k] for k in keys} for r in read_log(d / "log.csv")]  # noqa: E731
    assert rows(out) == rows(uninterrupted)
    a = load_file(str(uninterrupted / "final" / "model.safetensors"))
    b = load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(q.name.startswith(".tmp_") for q in (out / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------- hostile and bad files
class _Evil:
    """Unpickling this would create ``path``: the proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 2-step run with its step-2 checkpoint (copied by each test before it is damaged)."""
    out = tmp_path_factory.mktemp("short")
    assert main([*BASE, "--lr", "1e-3", "--steps", "2", "--save-every", "2", "--out", str(out)]) == 0
    return out


def _copy_run(short_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(short_run / "checkpoints", out / "checkpoints")
    return out


@pytest.mark.parametrize("resume", ["dir", "auto"])
def test_a_malicious_trainer_pt_is_refused_in_one_line_and_never_runs(short_run, tmp_path, capsys, resume):
    out = _copy_run(short_run, tmp_path)
    ck = out / "checkpoints" / "step_00000002"
    marker = tmp_path / "code_ran"
    torch.save({"step": 2, "optimizer": _Evil(str(marker))}, ck / "trainer.pt")
    capsys.readouterr()
    where = str(ck) if resume == "dir" else "auto"
    assert main([*BASE, "--lr", "1e-3", "--steps", "4", "--out", str(out), "--resume", where]) == 2
    err = _error_line(capsys)
    assert str(ck / "trainer.pt") in err and "refused, not a weights-only training state" in err, err
    assert not marker.exists()


def test_a_model_size_change_on_resume_is_named(short_run, tmp_path, capsys):
    out = _copy_run(short_run, tmp_path)
    capsys.readouterr()
    args = [*BASE, "--lr", "1e-3", "--steps", "4", "--out", str(out), "--resume", "auto", "--set", "depth=3",
            "--set", "embed_dim=32"]
    assert main(args) == 2
    err = _error_line(capsys)
    assert "config.json: the checkpoint's model differs" in err, err
    assert "embed_dim 64 vs 32" in err and "depth 2 vs 3" in err, err


def test_integer_weights_in_a_training_checkpoint_are_refused_not_cast(short_run, tmp_path, capsys):
    out = _copy_run(short_run, tmp_path)
    weights = out / "checkpoints" / "step_00000002" / "model.safetensors"
    w = load_file(str(weights))
    w["blocks.1.mlp.fc1.bias"] = w["blocks.1.mlp.fc1.bias"].round().long()
    save_file(w, str(weights))
    capsys.readouterr()
    assert main([*BASE, "--lr", "1e-3", "--steps", "4", "--out", str(out), "--resume", "auto"]) == 2
    err = _error_line(capsys)
    assert f"{weights}: tensor blocks.1.mlp.fc1.bias has dtype torch.int64" in err, err


def _saved(tmp_path, kind="classifier") -> Path:
    cfg = ModelConfig(**TINY_CFG)
    d = tmp_path / kind
    (Classifier(cfg, 3) if kind == "classifier" else Model(cfg)).save_pretrained(d)
    return d


MALFORMED = {
    "no config key": (lambda m: m.pop("config"), "the 'config' object (the ModelConfig fields) is missing"),
    "config not an object": (lambda m: m.update(config=[1, 2]), "the 'config' object"),
    "wrong type": (lambda m: m["config"].update(embed_dim="big"), "config field 'embed_dim' must be int, got 'big'"),
    "unknown preset": (lambda m: m["config"].update(preset="huge"), "unknown preset 'huge'"),
    "invalid sizes": (lambda m: m["config"].update(num_heads=5), "invalid model config (embed_dim=32 not divisible"),
    "num_classes": (lambda m: m.update(num_classes="3"), "'num_classes' must be an integer >= 1"),
    "model_type": (lambda m: m.update(model_type="gan"), "'model_type' is 'gan'"),
}


def _damage(cfg: Path, case: str) -> str:
    """Damage ``config.json`` as ``case`` says; the words the error must contain."""
    if case == "not json":
        cfg.write_text('{"model_type": "classifier", ')
        return "not valid JSON"
    meta = json.loads(cfg.read_text())
    edit, want = MALFORMED[case]
    edit(meta)
    cfg.write_text(json.dumps(meta))
    return want


@pytest.mark.parametrize("case", [*MALFORMED, "not json"])
def test_a_malformed_config_json_is_one_line_naming_the_file(tmp_path, capsys, case):
    if case != "num_classes":  # a pre-training Model's config.json has no num_classes
        pre = _saved(tmp_path, "pretrain") / "config.json"
        want = _damage(pre, case)
        with pytest.raises(CheckpointError) as e:
            Model.from_pretrained(pre.parent)
        assert str(e.value).startswith(f"{pre}: ") and want in str(e.value), str(e.value)
    d = _saved(tmp_path)
    cfg = d / "config.json"
    want = _damage(cfg, case)
    with pytest.raises(CheckpointError) as e:
        Classifier.from_pretrained(d)
    assert str(e.value).startswith(f"{cfg}: ") and want in str(e.value), str(e.value)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(d), "--data", "synthetic:8", "--workers", "0", "--quiet"]) == 2  # --workers 0: a checkpoint fault, not the loader's
    err = _error_line(capsys)
    assert str(cfg) in err and want in err, err


@pytest.mark.parametrize("fault", ["int64", "bool", "shape", "missing"])
def test_weights_that_do_not_fit_are_refused_naming_the_tensor(tmp_path, fault):
    from maskspec_fast.interop import save_mae_checkpoint

    d = _saved(tmp_path, "pretrain")
    weights = d / "model.safetensors"
    w = load_file(str(weights))
    key = "blocks.0.norm1.weight"
    if fault == "int64":
        w[key] = torch.ones_like(w[key], dtype=torch.int64)  # used to be cast to 1.0 silently
        want = f"tensor {key} has dtype torch.int64; the model expects a floating-point torch.float32"
    elif fault == "bool":
        w[key] = torch.ones_like(w[key], dtype=torch.bool)
        want = f"tensor {key} has dtype torch.bool"
    elif fault == "shape":
        w[key] = w[key][:-1].clone()
        want = f"tensor {key} has shape (31,); the model expects (32,)"
    else:
        del w[key]
        want = f"does not fit the model: missing {key}"
    save_file(w, str(weights))
    for load in (Model.from_pretrained, lambda p: Classifier.from_pretrained(p, num_classes=3)):
        with pytest.raises(CheckpointError) as e:
            load(d)
        assert str(e.value).startswith(f"{weights}: ") and (want in str(e.value) or fault == "missing"), e.value
    if fault == "missing":
        return  # a .pth without the tensor is read as another architecture (inferred from shapes)
    pth = save_mae_checkpoint(w, tmp_path / "ck.pth")
    with pytest.raises(CheckpointError, match=want.replace("(", r"\(").replace(")", r"\)")):
        Model.from_mae_checkpoint(pth)
