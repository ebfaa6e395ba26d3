"""``--compile`` (``TrainConfig.compile``, :func:`maskspec_fast.backends.compile_module`): the model is compiled in
place, checkpoints keep the plain parameter names, ``--resume auto`` continues whether or not either run compiled,
and the fused path's forward is one graph (0 graph breaks)."""
import json

import pytest
import torch
from safetensors.torch import load_file
from tolerance import assert_within

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.backends import compile_module
from maskspec_fast.train.cli import main

SMALL = ["--set", "embed_dim=32", "--set", "depth=1", "--set", "num_heads=2", "--decoder-dim", "32",
         "--decoder-depth", "1", "--decoder-heads", "2"]
RUN = ["pretrain", "--data", "synthetic:8", "--clip-seconds", "0.32", "--batch-size", "4", "--lr", "1e-3",
       "--warmup-steps", "1", "--save-every", "1", "--picture-every", "0", "--quiet", "--threads", "2", *SMALL]
# aot_eager: Dynamo capture + AOTAutograd (the joint graph, our custom ops' fake kernels) without inductor's C++
# code generation, which takes minutes on 2 CPU cores; test_inductor_compiled_training_step runs the default once.
QUICK = ["--compile-backend", "aot_eager"]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_forward_is_one_graph(fused):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", frames=64, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32,
                                  decoder_depth=1, decoder_num_heads=2)
    x = torch.randn(2, 128, 64)
    got = torch._dynamo.explain(Model(cfg, fused=fused))(x, mask_ratio=0.75)
    assert got.graph_break_count == 0 and got.graph_count == 1, [b.reason for b in got.break_reasons]
    got = torch._dynamo.explain(Classifier(cfg, 5, fused=fused))(x)
    assert got.graph_break_count == 0 and got.graph_count == 1, [b.reason for b in got.break_reasons]


@torch.no_grad()
def test_compile_module_keeps_names_and_outputs():
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", frames=64, embed_dim=32, depth=1, num_heads=2)
    clf = Classifier(cfg, 3, fused=True).eval()
    x = torch.randn(2, 128, 64)
    eager = clf(x)
    plain64 = Classifier(cfg, 3, fused=False).eval()  # the reference path in float64 (the C++ patchify is 32-bit)
    plain64.load_state_dict(clf.state_dict())
    precise = plain64.double()(x.double())
    names = list(clf.state_dict())
    compile_module(clf, "aot_eager")
    assert list(clf.state_dict()) == names and not any("_orig_mod" in n for n in names)
    # the same graph of the same ops: float32 rounding only (the shared rule; longest sum: the MLP's 4 x 32 inputs)
    assert_within(clf(x), eager, precise, torch.float32, terms=4 * 32, name="compiled logits")


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


@pytest.mark.parametrize("first, second", [(True, False), (False, True)], ids=["compiled-then-eager",
                                                                                "eager-then-compiled"])
def test_resume_with_or_without_compile(tmp_path, first, second):
    out = tmp_path / "run"
    assert main([*RUN, "--steps", "2", "--out", str(out), *(["--compile", *QUICK] if first else [])]) == 0
    assert not any("_orig_mod" in k for k in _weights(out, 2))
    assert main([*RUN, "--steps", "3", "--out", str(out), "--resume", "auto",
                 *(["--compile", *QUICK] if second else [])]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["compiled"] is second
    final = Model.from_pretrained(out / "final")  # loads in an eager model: plain names
    assert all(torch.isfinite(p).all() for p in final.parameters())


def test_eval_compile_matches_eager(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", frames=32, embed_dim=32, depth=1, num_heads=2)
    Classifier(cfg, 11).save_pretrained(tmp_path / "clf")
    base = ["eval", "--checkpoint", str(tmp_path / "clf"), "--data", "synthetic:11", "--clip-seconds", "0.32",
            "--quiet", "--threads", "2"]
    assert main([*base, "--out", str(tmp_path / "e1")]) == 0
    assert main([*base, "--compile", *QUICK, "--out", str(tmp_path / "e2")]) == 0
    a, b = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("e1", "e2"))
    assert a["clips"] == b["clips"] == 11 and a["accuracy"] == b["accuracy"]
    assert abs(a["loss"] - b["loss"]) <= 1e-5 * max(1.0, abs(a["loss"]))


def test_inductor_compiled_training_step(tmp_path, capsys):
    """The default backend (inductor), as a user's `--compile` runs it: the time of the first step is printed."""
    out = tmp_path / "run"
    assert main([*RUN, "--steps", "2", "--out", str(out), "--compile"]) == 0
    said = capsys.readouterr().out
    assert "torch.compile: first step took" in said
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compiled"] and summary["first_step_s"] > 0 and summary["steps"] == 2
