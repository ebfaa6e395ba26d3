"""Fused Triton masked MSE (loss + gradient in one pass) against the reference ``masked_mse_ref``: loss, grads of
pred / target / mask with the same upstream gradient, odd shapes, each dtype, NaN-poisoned buffers.

Comparisons follow the suite's one rule (``tests/tolerance.py``): the reference is run once more in float64 on the
same inputs (``precise``); the fast path may err at most twice as much as the reference, plus the dtype's bound for
the roundings of the operation (the kernel sums a patch row of ``P`` values in fp32 and rounds once to the dtype;
Triton's interpreter rounds to 16 bits by truncation, up to 2 u)."""
from __future__ import annotations

import pytest
import torch
from tolerance import assert_within

from maskspec_fast.ops import _triton_utils
from maskspec_fast.ops.masked_mse import masked_mse_on_masked_ref, masked_mse_ref
from maskspec_fast.ops.masking import masking_ids
from maskspec_fast.ops.triton_masked_mse import (
    MaskedMSELoss,
    masked_mse,
    masked_mse_on_masked,
)

pytestmark = pytest.mark.skipif(not _triton_utils.HAS_TRITON, reason="triton not installed")

# (B, L, K, P): MaskSpec's L=496/K=124 with small P, L prime with P=59, B=1 with K=1, full 16x16 patches
SHAPES = [(2, 496, 124, 64), (1, 31, 7, 59), (1, 5, 1, 3), (1, 23, 5, 256)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MASKSPEC_POISON", "1")


def _inputs(b, n, k, p, dtype, device="cpu"):
    mask, _, _, ids_masked = masking_ids(torch.rand(b, n, device=device), k)
    pred = torch.randn(b, n, p, dtype=dtype, device=device)
    target = (torch.randn(b, n, p, device=device) * 3 + 1).to(dtype)  # raw patches: not zero-mean, not unit
    return pred, target, mask, ids_masked


def _terms(p: int) -> int:
    """Rounded operations behind one element: a sum over the ``P`` values of a patch row (normalization, the row's
    error) in fp32, a few products and quotients, and the final rounding to the dtype (2: the interpreter
    truncates)."""
    return p + 6


def _check_grad(actual, expected, precise, dtype, name, p: int, scale: float | None = None):
    """The rule with ``precise`` = the reference's gradient in float64. ``scale``: the magnitude the gradient is
    computed from, when it is a difference of larger terms (the mask gradient ``g (mse_l - loss) / sum(mask)``
    follows ``mse_l``; under norm_pix the target gradient follows ``max |dL/dpred| / sigma``), else its own size."""
    assert actual is not None and expected is not None, name
    assert actual.dtype == expected.dtype, name
    assert not torch.isnan(actual).any(), f"{name}: NaN left in the output (element not written?)"
    assert_within(actual, expected, precise, dtype, terms=_terms(p), scale=scale, name=name)


def _norm_pix_target_scale(grad_pred: torch.Tensor, target: torch.Tensor) -> float:
    """The size of the terms the target gradient is summed from under norm_pix: the normalization's backward
    combines ``dL/dt_hat = -dL/dpred`` (per element) with its patch mean and its projection on ``t_hat``, each divided by
    the patch's ``sigma``, so the result (often much smaller) carries rounding of order ``max |dL/dpred| / sigma``."""
    from maskspec_fast.ops.masked_mse import NORM_PIX_EPS

    sigma = (target.double().var(-1, unbiased=True) + NORM_PIX_EPS).sqrt()
    return (grad_pred.double().abs().amax(-1) / sigma).max().item()


def _check_loss(actual, expected, precise, p: int, rows: int):
    """The loss: fp32 (every dtype accumulates in fp32), a mean of ``rows`` row errors of ``P`` values each."""
    assert actual.dtype == torch.float32 and actual.dim() == 0
    assert_within(actual, expected, precise, torch.float32, terms=_terms(p) + rows, name="loss")


def _precise_loss(fn, *args, **kw):
    """``fn`` on float64 copies of the floating-point arguments (the rule's ``precise``)."""
    return fn(*(a.detach().double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args), **kw)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_reference(shape, dtype, norm_pix):
    b, n, k, p = shape
    pred, target, mask, _ = _inputs(*shape, dtype)
    # a mask that needs its gradient makes the kernel read weight-0 rows too; half the cases take each path
    mask_grad = not norm_pix
    leaves_f = [t.clone().requires_grad_(t is not mask or mask_grad) for t in (pred, target, mask)]
    leaves_r = [t.clone().requires_grad_(t is not mask or mask_grad) for t in (pred, target, mask)]
    leaves_x = [t.clone().double().requires_grad_(t is not mask or mask_grad) for t in (pred, target, mask)]
    loss_f = masked_mse(*leaves_f, norm_pix=norm_pix)
    loss_r = masked_mse_ref(*leaves_r, norm_pix=norm_pix)
    loss_x = masked_mse_ref(*leaves_x, norm_pix=norm_pix)
    _check_loss(loss_f, loss_r, loss_x, p, b * n)
    g = torch.rand(()) + 0.5  # same upstream gradient, not 1
    loss_f.backward(g)
    loss_r.backward(g)
    loss_x.backward(g.double())
    # the mask gradient's terms: g * mse_l / sum(mask), with mse_l the per-patch error (fp64; norm_pix is off here)
    mse_l = (pred.double() - target.double()).pow(2).mean(-1)
    mask_scale = float(g) * mse_l.max().item() / mask.sum().clamp_min(1).item()
    scales = {"mask": mask_scale, "target": _norm_pix_target_scale(leaves_x[0].grad, target) if norm_pix else None}
    for name, a, e, x in zip(("pred", "target", "mask"), leaves_f, leaves_r, leaves_x, strict=True):
        if a.requires_grad:
            _check_grad(a.grad, e.grad, x.grad, dtype, f"grad_{name}", p, scales.get(name))
        else:
            assert a.grad is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES[:2])
def test_on_masked_matches_reference(shape, dtype):
    """Equal to masked_mse_ref(full_pred, target, mask) with full_pred holding pred_masked at ids_masked."""
    b, n, k, p = shape
    pred, target, mask, ids_masked = _inputs(b, n, k, p, dtype)
    idx = ids_masked.unsqueeze(-1).expand(-1, -1, p)
    pred_masked = torch.gather(pred, 1, idx)  # (B, M, P)
    pm_f, t_f = pred_masked.clone().requires_grad_(), target.clone().requires_grad_()
    loss_f = masked_mse_on_masked(pm_f, t_f, ids_masked)
    full = torch.randn_like(pred).scatter(1, idx, pred_masked)  # unmasked rows: anything
    full_r, t_r = full.clone().requires_grad_(), target.clone().requires_grad_()
    full_x, t_x = full.double().requires_grad_(), target.double().requires_grad_()
    loss_r = masked_mse_ref(full_r, t_r, mask)
    loss_x = masked_mse_ref(full_x, t_x, mask)
    _check_loss(loss_f, loss_r, loss_x, p, b * n)
    _check_loss(masked_mse_on_masked_ref(pred_masked, target, ids_masked), loss_r, loss_x, p, b * n)
    g = torch.rand(()) + 0.5
    loss_f.backward(g)
    loss_r.backward(g)
    loss_x.backward(g.double())
    _check_grad(pm_f.grad, torch.gather(full_r.grad, 1, idx), torch.gather(full_x.grad, 1, idx), dtype,
                "grad_pred_masked", p)
    _check_grad(t_f.grad, t_r.grad, t_x.grad, dtype, "grad_target", p, _norm_pix_target_scale(full_x.grad, target))


def test_on_masked_strided_ids_and_norm_pix_off():
    b, n, k, p = 2, 17, 4, 12
    noise = torch.rand(b, n)
    ids_masked = torch.argsort(noise, dim=1)[:, k:]  # the model's view: a column slice
    assert not ids_masked.is_contiguous()
    pm = torch.randn(b, n - k, p, requires_grad=True)
    pm_x = pm.detach().double().requires_grad_()
    target = torch.randn(b, n, p)
    for norm_pix in (True, False):
        out = masked_mse_on_masked(pm, target, ids_masked, norm_pix)
        ref = masked_mse_on_masked_ref(pm, target, ids_masked, norm_pix)
        pre = masked_mse_on_masked_ref(pm_x, target.double(), ids_masked, norm_pix)
        _check_loss(out, ref, pre, p, b * n)
        (g,) = torch.autograd.grad(out, pm)
        (g_ref,) = torch.autograd.grad(ref, pm)
        (g_pre,) = torch.autograd.grad(pre, pm_x)
        _check_grad(g, g_ref, g_pre, torch.float32, "grad_pred_masked", p)


def test_fp16_large_upstream_gradient():
    """A GradScaler multiplies the loss by ~2**16: the stored fp16 gradient must not underflow before that
    factor is applied (the per-element gradient is ~1e-6 here, below fp16's normal range)."""
    b, n, k, p = 2, 496, 124, 64
    pred, target, mask, _ = _inputs(b, n, k, p, torch.float16)
    pf, pr, px = pred.clone().requires_grad_(), pred.clone().requires_grad_(), pred.double().requires_grad_()
    scale = torch.tensor(2.0**16)
    masked_mse(pf, target, mask).backward(scale)
    masked_mse_ref(pr, target, mask).backward(scale)
    masked_mse_ref(px, target.double(), mask).backward(scale.double())
    _check_grad(pf.grad, pr.grad, px.grad, torch.float16, "grad_pred (scaled)", p)


def test_edge_masks():
    b, n, p = 2, 9, 7
    pred, target = torch.randn(b, n, p), torch.randn(b, n, p)
    # nothing masked: loss 0, zero gradient (and no NaN from 0/0)
    zero = torch.zeros(b, n)
    pf = pred.clone().requires_grad_()
    loss = masked_mse(pf, target, zero)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pf.grad, torch.zeros_like(pred))
    # soft weights and a bool mask
    soft = torch.rand(b, n)
    hard = torch.rand(b, n) > 0.5
    for fast, mask, norm_pix in ((masked_mse, soft, True), (MaskedMSELoss(), hard, True),
                                 (MaskedMSELoss(norm_pix=False), hard, False)):
        _check_loss(fast(pred, target, mask), masked_mse_ref(pred, target, mask, norm_pix),
                    _precise_loss(masked_mse_ref, pred, target, mask, norm_pix), p, b * n)


def test_no_grad_and_eval():
    pred, target, mask, _ = _inputs(2, 11, 3, 8, torch.float32)
    pred.requires_grad_()
    with torch.no_grad():
        _check_loss(masked_mse(pred, target, mask), masked_mse_ref(pred, target, mask),
                    _precise_loss(masked_mse_ref, pred, target, mask), 8, 2 * 11)


def test_cpu_without_interpreter_uses_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    pred, target, mask, ids_masked = _inputs(2, 11, 3, 8, torch.float32)
    assert torch.equal(masked_mse(pred, target, mask), masked_mse_ref(pred, target, mask))
    pm = torch.gather(pred, 1, ids_masked.unsqueeze(-1).expand(-1, -1, 8))
    assert torch.equal(masked_mse_on_masked(pm, target, ids_masked), masked_mse_on_masked_ref(pm, target, ids_masked))


def test_rejects_bad_inputs():
    pred = torch.randn(2, 8, 5).transpose(1, 2)  # (2, 5, 8), last stride 5
    with pytest.raises(ValueError, match="pred"):
        masked_mse(pred, torch.randn(2, 5, 8), torch.ones(2, 5))
    with pytest.raises(ValueError, match="mask"):
        masked_mse(torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.ones(2, 4))


def test_opcheck():
    pred, target, mask, ids_masked = _inputs(2, 7, 2, 6, torch.float32)
    pred.requires_grad_()
    torch.library.opcheck(torch.ops.maskspec.masked_mse.default, (pred, target, mask, True, True, False, True))
    pm = torch.gather(pred.detach(), 1, ids_masked.unsqueeze(-1).expand(-1, -1, 6)).requires_grad_()
    torch.library.opcheck(torch.ops.maskspec.masked_mse_on_masked.default, (pm, target, ids_masked, True, True, False))


def test_compiles_without_graph_break():
    pred, target, mask, ids_masked = _inputs(2, 13, 3, 10, torch.float32)
    w = torch.randn(10, 10, requires_grad=True)

    def f(pred, w):
        return masked_mse(pred @ w, target, mask) + masked_mse_on_masked(
            torch.gather(pred @ w, 1, ids_masked.unsqueeze(-1).expand(-1, -1, 10)), target, ids_masked
        )

    torch._dynamo.reset()
    loss = torch.compile(f, backend="aot_eager", fullgraph=True)(pred, w)
    loss.backward()
    w2, wx = w.detach().clone().requires_grad_(), w.detach().double().requires_grad_()
    ref = masked_mse_ref(pred @ w2, target, mask) * 2
    ref.backward()
    pre = masked_mse_ref(pred.double() @ wx, target.double(), mask) * 2
    pre.backward()
    # pred @ w adds 10 products per element before the loss: 10 more roundings
    _check_loss(loss, ref, pre, 10 + 10, 2 * 13)
    _check_grad(w.grad, w2.grad, wx.grad, torch.float32, "grad_w", 10 + 2 * 13)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 496, 124, 256), (3, 31, 7, 59), (1, 5, 1, 3)])
def test_gpu_compiled(shape, dtype):
    pred, target, mask, ids_masked = _inputs(*shape, dtype, device="cuda")
    b, n, _, p = shape
    pf, pr, px = pred.clone().requires_grad_(), pred.clone().requires_grad_(), pred.double().requires_grad_()
    loss_f = torch.compile(masked_mse)(pf, target, mask)
    loss_r = masked_mse_ref(pr, target, mask)
    loss_x = masked_mse_ref(px, target.double(), mask)
    _check_loss(loss_f, loss_r, loss_x, p, b * n)
    loss_f.backward()
    loss_r.backward()
    loss_x.backward()
    _check_grad(pf.grad, pr.grad, px.grad, dtype, "grad_pred", p)
    pm = torch.gather(pred, 1, ids_masked.unsqueeze(-1).expand(-1, -1, p)).requires_grad_()
    _check_loss(masked_mse_on_masked(pm, target, ids_masked), loss_r, loss_x, p, b * n)
