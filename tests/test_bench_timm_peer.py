"""The timm peer row of benchmarks/throughput.py: MaskSpec on timm's ViT ``Block`` is the same model as ours (same
state dict, same loss for the same weights and noise), so its timing is a like-for-like bar.

timm needs torchvision, which does not load beside the CPU torch of the main venv: ``make test`` runs this file in
``.venv-timm`` (the main suite skips it)."""
from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm", reason="timm not installed (make test runs this file in .venv-timm)")

from tolerance import assert_within  # noqa: E402

from maskspec_fast import Classifier, Model, ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _throughput():
    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cfg() -> ModelConfig:
    return ModelConfig.from_preset("tiny", n_mels=32, frames=80, embed_dim=64, num_heads=4, depth=2,
                                   decoder_embed_dim=32, decoder_num_heads=4, decoder_depth=2)


def test_timm_pretrain_model_is_ours_with_timm_blocks():
    tp = _throughput()
    c = _cfg()
    peer = tp.build_timm_model("pretrain", c)
    ours = Model(c, fused=False)
    assert type(peer.blocks[0]).__module__.startswith("timm.")
    assert type(peer.decoder_blocks[0]).__module__.startswith("timm.")
    assert peer.blocks[0].attn.fused_attn  # timm's SDPA path, the one a user gets by default
    assert {k: v.shape for k, v in peer.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
    peer.load_state_dict(ours.state_dict(), strict=True)
    spec, noise = torch.randn(3, c.n_mels, c.frames), torch.rand(3, c.num_patches)
    loss_p, pred_p, mask_p = peer(spec, noise=noise)
    loss_o, pred_o, mask_o = ours(spec, noise=noise)
    loss_64, pred_64, _ = copy.deepcopy(ours).double()(spec.double(), noise=noise)
    assert torch.equal(mask_p, mask_o)  # same masking
    assert_within(pred_p, pred_o, pred_64, terms=c.embed_dim, name="pred")
    assert_within(loss_p, loss_o, loss_64, terms=c.embed_dim, name="loss")  # same loss


def test_timm_finetune_model_matches_ours():
    tp = _throughput()
    c = _cfg()
    peer = tp.build_timm_model("finetune", c, num_classes=5).eval()
    ours = Classifier(c, 5, fused=False).eval()
    peer.load_state_dict(ours.state_dict(), strict=True)
    spec = torch.randn(2, c.n_mels, c.frames)
    gold = copy.deepcopy(ours).double()
    assert_within(peer(spec), ours(spec), gold(spec.double()), terms=c.embed_dim, name="logits")


def test_throughput_timm_row_runs_and_is_the_bar(tmp_path):
    tp = _throughput()
    rows_file = tmp_path / "rows.jsonl"
    args = tp.parse_args(["--preset", "tiny", "--frames", "64", "--batch-size", "2", "--modes", "pretrain",
                          "--impls", "ref,fused,timm", "--num-warm-iter", "1", "--num-bench-iter", "2",
                          "--peak-tflops", "1", "--rows-file", str(rows_file), "--results-file", ""])
    rows = tp.run(args)
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["timm"]["status"] == "ok", by_impl["timm"]
    assert by_impl["fused"]["vs_timm"] > 0 and by_impl["timm"]["vs_timm"] == 1.0
    assert by_impl["timm"]["floor_ms"] == pytest.approx(1e3 * by_impl["timm"]["GFLOP_per_step"] * 1e9 / 1e12)
    assert len(rows_file.read_text().splitlines()) == 1 + 3  # header + one line per row, written as they finished


def test_inference_timm_row_is_a_vision_transformer_on_our_log_mel():
    spec = importlib.util.spec_from_file_location("bench_inference", ROOT / "benchmarks" / "inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.run(bench.parse_args(["--quick", "--backends", "eager,timm", "--results-file", ""]))
    timm_rows = [r for r in rows if r["backend"] == "timm"]
    assert len(timm_rows) == 2 and all(r["status"] == "ok" and r["x_realtime"] > 0 for r in timm_rows), timm_rows
    clf = bench.build("tiny", quick=True)
    wave = torch.randn(2, 86720)
    with torch.no_grad():
        assert bench.build_timm(clf)(wave).shape == (2, clf.config.embed_dim)  # timm's own ViT, mean-pooled
