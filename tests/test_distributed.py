"""Multi-process training (torchrun, Gloo on CPU) gives the one-process result for the same global batch; the
sampler's sharding and class-balanced drawing."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tolerance import assert_dtype_bound, assert_within, max_error

from maskspec_fast.train.cli import main
from maskspec_fast.train.distributed import local_rows
from maskspec_fast.train.sampler import ResumableSampler

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--set", "embed_dim=64", "--set", "depth=2", "--set", "num_heads=2"]
DECODER = ["--decoder-dim", "64", "--decoder-depth", "1", "--decoder-heads", "2"]
# --workers 0: several ranks x DataLoader workers would oversubscribe 2 cores; worker processes are covered by
# test_input_matrix.py (ranks 1/2 x workers 0/2) and test_bad_input_matrix.py at the defaults.
FAST = ["--clip-seconds", "0.64", "--workers", "0", "--quiet", "--log-every", "1", "--picture-every", "0"]


def read_log(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def torchrun(args, nproc=2, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "maskspec_fast.train", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"torchrun failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


def _comparable_weights(path: Path) -> dict[str, torch.Tensor]:
    """The final weights, without the key bias: its gradient is exactly zero (softmax ignores a shift shared by all
    keys), and AdamW turns the rounding noise of that zero into lr-sized steps, so it differs between any two
    summation orders by lr, not by rounding (a fact of the model, not a tolerance)."""
    w = load_file(str(path / "final" / "model.safetensors"))
    for k in [k for k in w if k.endswith("attn.qkv.bias")]:
        d = w[k].shape[0] // 3
        w[k] = torch.cat([w[k][:d], w[k][2 * d :]])
    return w


def assert_same_run(one: Path, two: Path, orders: list[Path], steps: int) -> None:
    """Two processes (``two``) against one (``one``) on the shared tolerance rule (``tests/tolerance.py``).

    A whole run through the CLI has no float64 twin, so the yardstick is the one-process run's own sensitivity to
    summation order: each of ``orders`` is the same run on one process, reordered as an all-reduce reorders it (the
    global batch summed from micro-batches, at the same thread count), and the yardstick is the largest ``|order - one|``
    among them (one reordering alone is one draw of that sensitivity: 1.2e-5 to 5.0e-5 of the weights' scale here).
    Rounding differences spread over every tensor within a few steps, so the weights are compared as one model:
    each tensor divided by its largest ``|one|``, all of them in one vector. ``|two - one|`` may be at most ``C``
    times the yardstick, plus float32's bound for ``steps`` AdamW steps of rounding (and, for the losses, the 6
    printed decimals of both logs compared)."""
    a, b = read_log(one / "log.csv"), read_log(two / "log.csv")
    reordered = [read_log(d / "log.csv") for d in orders]
    assert all([r["step"] for r in x] == [r["step"] for r in a] for x in [b, *reordered])
    assert [r["lr"] for r in a] == [r["lr"] for r in b]  # the schedule is exact: same strings
    loss = lambda rows: torch.tensor([float(r["loss"]) for r in rows], dtype=torch.float64)  # noqa: E731
    widest = max(reordered, key=lambda o: max_error(loss(o), loss(a)))
    assert_within(loss(b), loss(widest), loss(a), torch.float32, terms=steps, decimals=6, printed=2,
                  name="loss curve")
    wa, wb = _comparable_weights(one), _comparable_weights(two)
    wos = [_comparable_weights(d) for d in orders]
    assert all(w.keys() == wa.keys() for w in [wb, *wos])
    scale = {k: wa[k].abs().max().clamp_min(torch.finfo(torch.float32).tiny) for k in wa}
    model = lambda w: torch.cat([(w[k] / scale[k]).flatten().double() for k in sorted(w)])  # noqa: E731
    widest_w = max((model(w) for w in wos), key=lambda m: max_error(m, model(wa)))
    assert_within(model(wb), widest_w, model(wa), torch.float32, terms=steps, name="weights / max |weight|")


# ----------------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("size, batch", [(41, 6), (40, 8), (13, 4)])
def test_global_batches_do_not_depend_on_the_number_of_processes(size, batch):
    one = ResumableSampler(size, seed=5).indices()
    for w in (2, 4) if batch % 4 == 0 else (2,):
        local = batch // w
        shards = [ResumableSampler(size, seed=5, rank=r, world_size=w).indices() for r in range(w)]
        assert len({len(s) for s in shards}) == 1  # equal counts (padding)
        for s in range(size // batch):
            union = torch.zeros(batch, dtype=torch.long)
            for r in range(w):
                union[local_rows(batch, r, w)] = torch.tensor(shards[r][s * local : (s + 1) * local])
            assert union.tolist() == one[s * batch : (s + 1) * batch], (w, s)


def test_mid_epoch_skip_continues_the_same_order():
    s = ResumableSampler(30, seed=1, rank=1, world_size=2)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, skip=6)
    assert list(s) == full[6:] and len(s) == len(full) - 6


def test_weighted_sampler_is_seeded_and_follows_the_weights():
    w = torch.tensor([1.0] * 90 + [9.0] * 10, dtype=torch.float64)  # 10 rare clips hold half the mass
    s = ResumableSampler(100, seed=2, weights=w)
    counts = torch.zeros(100)
    for e in range(60):
        s.set_epoch(e)
        idx = s.indices()
        assert len(idx) == 100
        counts += torch.bincount(torch.tensor(idx), minlength=100)
    rare = counts[90:].sum() / counts.sum()
    assert 0.45 < rare < 0.55, rare  # expected 0.5; sd ~0.006 over 6000 draws
    s.set_epoch(7)
    again = ResumableSampler(100, seed=2, weights=w)
    again.set_epoch(7)
    assert s.indices() == again.indices()
    again.set_epoch(8)
    assert s.indices() != again.indices()
    with pytest.raises(ValueError):
        ResumableSampler(3, weights=torch.tensor([1.0, -1.0, 1.0]))


def test_dataset_sample_weights_balance_classes():
    from maskspec_fast.data import SyntheticSounds

    ds = SyntheticSounds(33, clip_seconds=0.64)
    w = ds.sample_weights()
    labels = torch.tensor([ds._label(i) for i in range(len(ds))])
    per_class = torch.zeros(ds.num_classes, dtype=torch.float64).index_add_(0, labels, w)
    assert_dtype_bound(per_class, torch.full_like(per_class, per_class.mean().item()), terms=len(ds),
                       name="weight per class")  # a sum over the class's clips


# --------------------------------------------------------------------------------------------- two processes
def test_two_processes_equal_one_process_pretraining(tmp_path):
    """Same global batch of 8: one process (no accumulation) vs two processes of 4 clips, each in 2 micro-batches
    (DDP all-reduce + no_sync accumulation). Mask noise and mel jitter are drawn per global batch."""
    base = ["pretrain", "--data", "synthetic:40", "--steps", "5", "--batch-size", "8", "--lr", "2e-3",
            "--warmup-steps", "1", "--save-every", "3", *SMALL, *DECODER, *FAST]
    assert main([*base, "--out", str(tmp_path / "one"), "--threads", "2"]) == 0
    # the yardstick: one process, one thread, the global batch summed from 2 and from 4 micro-batches (the 2 x 2
    # below sum 4)
    for k in (2, 4):
        assert main([*base, "--out", str(tmp_path / f"order{k}"), "--accum-steps", str(k), "--threads", "1"]) == 0
    res = torchrun([*base, "--out", str(tmp_path / "two"), "--accum-steps", "2", "--threads", "1"])
    assert "processes=2 (gloo)" in res.stdout
    assert_same_run(tmp_path / "one", tmp_path / "two", [tmp_path / "order2", tmp_path / "order4"], steps=5)
    state = torch.load(tmp_path / "two" / "checkpoints" / "step_00000003" / "trainer.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2 and state["global_batch"] == 8
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2


def test_two_processes_equal_one_process_finetuning_with_eval(tmp_path):
    """Fine-tuning with SpecAugment and class-balanced sampling, evaluated (sharded, gathered) every 2 steps:
    losses, evaluation accuracies and the best checkpoint agree. (Mixup, drop path and patchout are per-process
    and therefore not part of this comparison.)"""
    base = ["finetune", "--data", "synthetic:36:seed=3", "--eval-data", "synthetic:15:seed=4", "--eval-every", "2",
            "--steps", "4", "--batch-size", "6", "--lr", "2e-3", "--warmup-steps", "1", "--save-every", "0",
            "--drop-path", "0", "--patchout", "0", "--freq-mask", "48", "--time-mask", "192", "--balanced-sampling", *SMALL,
            *FAST]
    assert main([*base, "--out", str(tmp_path / "one"), "--threads", "2"]) == 0
    # the yardstick: one process, one thread, the global batch summed from 2 micro-batches (as the 2 processes
    # below) and from 3
    for k in (2, 3):
        assert main([*base, "--out", str(tmp_path / f"order{k}"), "--accum-steps", str(k), "--threads", "1"]) == 0
    torchrun([*base, "--out", str(tmp_path / "two"), "--threads", "1"])
    assert_same_run(tmp_path / "one", tmp_path / "two", [tmp_path / "order2", tmp_path / "order3"], steps=4)
    # accuracies compared as counts of correct clips (an exact quantity), never as printed decimals
    correct = lambda acc, clips=15: round(float(acc) * clips)  # noqa: E731
    ea, eb = read_log(tmp_path / "one" / "eval.csv"), read_log(tmp_path / "two" / "eval.csv")
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == ["2", "4"]
    assert [correct(r["value"]) for r in ea] == [correct(r["value"]) for r in eb]
    ba, bb = (json.loads((tmp_path / d / "best.json").read_text()) for d in ("one", "two"))
    assert (ba["step"], correct(ba["value"])) == (bb["step"], correct(bb["value"]))
    sa, sb = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert sa["eval"]["clips"] == sb["eval"]["clips"] == 15
    assert correct(sa["eval"]["accuracy"]) == correct(sb["eval"]["accuracy"])


def test_global_batch_must_split_over_processes_and_micro_batches(tmp_path, capsys):
    args = ["pretrain", "--data", "synthetic:20", "--steps", "1", "--batch-size", "6", "--accum-steps", "4",
            "--out", str(tmp_path), *SMALL, *DECODER, *FAST]
    assert main(args) == 2
    assert "global batch" in capsys.readouterr().err
