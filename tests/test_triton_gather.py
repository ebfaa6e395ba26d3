"""Triton gathers (visible gather, decoder un-shuffle) against the references: outputs and every gradient, odd
shapes, each dtype with its own tolerance, output buffers NaN-poisoned (MASKSPEC_POISON=1).

Comparisons follow the suite's one rule (``tests/tolerance.py``): the reference is also run in float64 on the same
inputs (``precise``), and the fast path may err at most twice as much as the reference does, plus the dtype's bound
for the roundings an element goes through. On CPU the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1), which rounds fp32 -> 16-bit by truncation (compiled kernels round to nearest): up to 2 u per
rounding, hence 2 terms per rounding in that bound. Exact operations (a gather without a sum) are compared with
``torch.equal``.
"""
from __future__ import annotations

import pytest
import torch
from tolerance import assert_within

from maskspec_fast.ops import _triton_utils
from maskspec_fast.ops.gather import gather_visible_ref, unshuffle_ref
from maskspec_fast.ops.masking import masking_ids
from maskspec_fast.ops.triton_gather import gather_visible, triton_status, unshuffle

pytestmark = pytest.mark.skipif(not _triton_utils.HAS_TRITON, reason="triton not installed")

# (B, L, K, D): MaskSpec's L=496/K=124 with a small D, L prime with D=59, B=1 with K=1; B=11 spans two batch
# chunks of the reducing backward kernels (8 samples each), D=1100 two column blocks (BLOCK_D caps at 1024)
SHAPES = [(2, 496, 124, 32), (1, 31, 7, 59), (1, 13, 1, 5), (11, 6, 2, 5), (2, 7, 3, 1100)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MASKSPEC_POISON", "1")


def _ids(b: int, n: int, k: int, device="cpu"):
    _, ids_restore, ids_keep, _ = masking_ids(torch.rand(b, n, device=device), k)
    return ids_restore, ids_keep


def _check(actual: torch.Tensor, expected: torch.Tensor, precise: torch.Tensor, dtype: torch.dtype, name: str,
           count: int = 1):
    """The rule with ``precise`` = the reference in float64. ``count``: how many values each element sums (1: an
    add of the positional table or a copy; reduction gradients sum over samples). The kernels accumulate in fp32 and
    round once to ``dtype``: ``count`` float32 roundings (bounded by ``dtype``'s unit) plus that final one, doubled
    for the interpreter's truncation."""
    assert actual.dtype == expected.dtype, name
    assert not torch.isnan(actual).any(), f"{name}: NaN left in the output (element not written?)"
    assert_within(actual, expected, precise, dtype, terms=2 * (count + 1), name=name)


def _run_both(fn_fast, fn_ref, inputs: list[torch.Tensor]):
    """Run fast and reference on clones of the same leaves with the same upstream gradient, and the reference once
    more in float64 (``precise``). Returns ``(out_fast, out_ref, out_precise, leaves_fast, leaves_ref,
    leaves_precise)``."""
    leaves_f = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    leaves_r = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    leaves_p = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
    out_f = fn_fast(*leaves_f)
    out_r = fn_ref(*leaves_r)
    out_p = fn_ref(*leaves_p)
    g = torch.randn_like(out_r)
    out_f.backward(g)
    out_r.backward(g)
    out_p.backward(g.double())
    return out_f, out_r, out_p, leaves_f, leaves_r, leaves_p


@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_visible_matches_reference(shape, dtype, with_pos):
    b, n, k, d = shape
    _, ids_keep = _ids(b, n, k)
    x = torch.randn(b, n, d, dtype=dtype, requires_grad=True)
    pos = torch.randn(n, d, dtype=dtype, requires_grad=True) if with_pos else None
    if with_pos:
        out_f, out_r, out_p, lf, lr, lp = _run_both(
            lambda x, p: gather_visible(x, ids_keep, p), lambda x, p: gather_visible_ref(x, ids_keep, p), [x, pos]
        )
    else:
        out_f, out_r, out_p, lf, lr, lp = _run_both(
            lambda x: gather_visible(x, ids_keep), lambda x: gather_visible_ref(x, ids_keep), [x]
        )
    assert out_f.shape == (b, k, d)
    if with_pos:
        _check(out_f, out_r, out_p, dtype, "out")
    else:  # a pure gather: exact
        assert torch.equal(out_f, out_r), "out"
    assert torch.equal(lf[0].grad, lr[0].grad), "grad_x"  # a scatter of the upstream gradient: exact
    if with_pos:
        _check(lf[1].grad, lr[1].grad, lp[1].grad, dtype, "grad_pos", count=b)


def test_gather_visible_frozen_pos_and_strided_ids():
    """The model's call: pos is a frozen table, ids_keep a column slice of ids_shuffle (row stride L)."""
    b, n, k, d = 2, 37, 9, 24
    noise = torch.rand(b, n)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_keep = ids_shuffle[:, :k]
    assert not ids_keep.is_contiguous()
    pos_full = torch.randn(1, n + 1, d)  # (1, 1+L, D) with CLS, frozen
    x = torch.randn(b, n, d, requires_grad=True)
    out = gather_visible(x, ids_keep, pos_full[0, 1:])
    ref = gather_visible_ref(x, ids_keep, pos_full[0, 1:])
    assert torch.equal(out, ref)  # one fp32 add of the table per element, the same in both
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    assert torch.equal(gx, gx_ref)


@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_unshuffle_matches_reference(shape, dtype, with_pos):
    b, n, k, d = shape
    ids_restore, _ = _ids(b, n, k)
    xv = torch.randn(b, k, d, dtype=dtype, requires_grad=True)
    tok = torch.randn(d, dtype=dtype, requires_grad=True)
    pos = torch.randn(n, d, dtype=dtype, requires_grad=True) if with_pos else None
    if with_pos:
        out_f, out_r, out_p, lf, lr, lp = _run_both(
            lambda x, t, p: unshuffle(x, t, ids_restore, p), lambda x, t, p: unshuffle_ref(x, t, ids_restore, p),
            [xv, tok, pos],
        )
    else:
        out_f, out_r, out_p, lf, lr, lp = _run_both(
            lambda x, t: unshuffle(x, t, ids_restore), lambda x, t: unshuffle_ref(x, t, ids_restore), [xv, tok]
        )
    assert out_f.shape == (b, n, d)
    if with_pos:
        _check(out_f, out_r, out_p, dtype, "out")
    else:  # rows copied from x_visible or the mask token: exact
        assert torch.equal(out_f, out_r), "out"
    assert torch.equal(lf[0].grad, lr[0].grad), "grad_x_visible"  # a gather of the upstream gradient: exact
    _check(lf[1].grad, lr[1].grad, lp[1].grad, dtype, "grad_mask_token", count=b * (n - k))
    if with_pos:
        _check(lf[2].grad, lr[2].grad, lp[2].grad, dtype, "grad_pos", count=b)


def test_unshuffle_model_call():
    """The model's call: x[:, 1:] (a strided view, CLS dropped), mask_token a (1, 1, Dd) Parameter reshaped,
    frozen pos[0, 1:]."""
    b, n, k, d = 2, 29, 8, 40
    ids_restore, _ = _ids(b, n, k)
    x = torch.randn(b, 1 + k, d, requires_grad=True)
    mask_token = torch.nn.Parameter(torch.randn(1, 1, d))
    pos = torch.randn(1, 1 + n, d)
    out = unshuffle(x[:, 1:], mask_token.reshape(-1), ids_restore, pos[0, 1:])
    ref = unshuffle_ref(x[:, 1:], mask_token.reshape(-1), ids_restore, pos[0, 1:])
    assert torch.equal(out, ref)  # one fp32 add of the table per element, the same in both
    g = torch.randn_like(out)
    gx, gt = torch.autograd.grad(out, [x, mask_token], g)
    gx_ref, gt_ref = torch.autograd.grad(ref, [x, mask_token], g)
    tok64 = mask_token.detach().double().requires_grad_()
    precise = unshuffle_ref(x[:, 1:].detach().double(), tok64.reshape(-1), ids_restore, pos[0, 1:].double())
    (gt_precise,) = torch.autograd.grad(precise, tok64, g.double())
    assert gt.shape == mask_token.shape
    assert torch.equal(gx, gx_ref)
    _check(gt, gt_ref, gt_precise, torch.float32, "grad_mask_token", count=b * (n - k))


def test_upstream_grad_any_view():
    """Autograd may hand the backward an expanded (stride-0) gradient: handled by an explicit copy."""
    b, n, k, d = 2, 11, 3, 6
    ids_restore, ids_keep = _ids(b, n, k)
    x = torch.randn(b, n, d, requires_grad=True)
    gather_visible(x, ids_keep).sum().backward()
    ref = torch.zeros_like(x).scatter_(1, ids_keep.unsqueeze(-1).expand(-1, -1, d), 1.0)
    assert torch.equal(x.grad, ref)  # sums of ones: exact
    xv = torch.randn(b, k, d, requires_grad=True)
    tok = torch.randn(d, requires_grad=True)
    unshuffle(xv, tok, ids_restore).sum().backward()
    assert torch.equal(xv.grad, torch.ones_like(xv))
    assert torch.equal(tok.grad, torch.full((d,), float(b * (n - k))))  # a small integer count: exact


def test_rejects_non_unit_last_stride():
    x = torch.randn(2, 8, 6).transpose(1, 2)  # (2, 6, 8), last stride 6
    _, ids_keep = _ids(2, 6, 2)
    with pytest.raises(ValueError, match=r"\bx\b"):
        gather_visible(x, ids_keep)
    xv = torch.randn(2, 6, 3).transpose(1, 2)
    ids_restore, _ = _ids(2, 7, 3)
    with pytest.raises(ValueError, match="x_visible"):
        unshuffle(xv, torch.randn(6), ids_restore)


def test_cpu_without_interpreter_uses_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "reference" in triton_status()
    b, n, k, d = 2, 10, 3, 4
    ids_restore, ids_keep = _ids(b, n, k)
    x = torch.randn(b, n, d)
    pos = torch.randn(n, d)
    assert torch.equal(gather_visible(x, ids_keep, pos), gather_visible_ref(x, ids_keep, pos))
    xv, tok = torch.randn(b, k, d), torch.randn(d)
    assert torch.equal(unshuffle(xv, tok, ids_restore, pos), unshuffle_ref(xv, tok, ids_restore, pos))


def test_opcheck():
    b, n, k, d = 2, 7, 3, 5
    ids_restore, ids_keep = _ids(b, n, k)
    x = torch.randn(b, n, d, requires_grad=True)
    pos = torch.randn(n, d, requires_grad=True)
    torch.library.opcheck(torch.ops.maskspec.gather_visible.default, (x, ids_keep, pos))
    xv = torch.randn(b, k, d, requires_grad=True)
    tok = torch.randn(d, requires_grad=True)
    torch.library.opcheck(torch.ops.maskspec.unshuffle.default, (xv, tok, ids_restore, pos))


def test_compiles_without_graph_break():
    """fullgraph=True fails on a graph break; aot_eager traces forward and backward through the fake impls."""
    b, n, k, d = 2, 9, 3, 8
    ids_restore, ids_keep = _ids(b, n, k)
    x = torch.randn(b, n, d, requires_grad=True)
    pos = torch.randn(n, d)
    tok = torch.randn(d, requires_grad=True)

    def f(x, tok):
        v = gather_visible(x, ids_keep, pos)
        return unshuffle(v * 2, tok, ids_restore, pos).square().sum()

    torch._dynamo.reset()
    loss = torch.compile(f, backend="aot_eager", fullgraph=True)(x, tok)
    loss.backward()
    refs = []
    for dt in (torch.float32, torch.float64):  # the reference, and the same in float64 (precise)
        x2, tok2 = x.detach().to(dt).requires_grad_(), tok.detach().to(dt).requires_grad_()
        ref = (unshuffle_ref(gather_visible_ref(x2, ids_keep, pos.to(dt)) * 2, tok2, ids_restore, pos.to(dt)))
        ref = ref.square().sum()
        ref.backward()
        refs.append((ref, x2.grad, tok2.grad))
    (ref, gx_ref, gt_ref), (pre, gx_pre, gt_pre) = refs
    _check(loss, ref, pre, torch.float32, "loss", count=b * n * d)
    _check(x.grad, gx_ref, gx_pre, torch.float32, "grad_x", count=2)
    _check(tok.grad, gt_ref, gt_pre, torch.float32, "grad_mask_token", count=b * (n - k))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 496, 124, 768), (3, 31, 7, 59), (1, 13, 1, 5)])
def test_gpu_compiled(shape, dtype):
    b, n, k, d = shape
    dev = "cuda"
    ids_restore, ids_keep = _ids(b, n, k, dev)
    x = torch.randn(b, n, d, dtype=dtype, device=dev, requires_grad=True)
    pos = torch.randn(n, d, dtype=dtype, device=dev, requires_grad=True)
    out_f, out_r, out_p, lf, lr, lp = _run_both(
        torch.compile(lambda x, p: gather_visible(x, ids_keep, p)), lambda x, p: gather_visible_ref(x, ids_keep, p),
        [x, pos],
    )
    _check(out_f, out_r, out_p, dtype, "out")
    _check(lf[0].grad, lr[0].grad, lp[0].grad, dtype, "grad_x")
    _check(lf[1].grad, lr[1].grad, lp[1].grad, dtype, "grad_pos", count=b)
    xv = torch.randn(b, k, d, dtype=dtype, device=dev, requires_grad=True)
    tok = torch.randn(d, dtype=dtype, device=dev, requires_grad=True)
    out_f, out_r, out_p, lf, lr, lp = _run_both(
        torch.compile(lambda x, t, p: unshuffle(x, t, ids_restore, p)),
        lambda x, t, p: unshuffle_ref(x, t, ids_restore, p), [xv, tok, pos],
    )
    _check(out_f, out_r, out_p, dtype, "out")
    _check(lf[0].grad, lr[0].grad, lp[0].grad, dtype, "grad_x_visible")
    _check(lf[1].grad, lr[1].grad, lp[1].grad, dtype, "grad_mask_token", count=b * (n - k))
    _check(lf[2].grad, lr[2].grad, lp[2].grad, dtype, "grad_pos", count=b)
