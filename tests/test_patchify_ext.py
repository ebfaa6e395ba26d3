"""Fused patchify (C++ extension, Triton kernels, torch.library ops) against the references in
maskspec_fast.ops: bit-exact patches for every dtype, gradients, thread-count independence, clear errors, and the
quiet fallback when the extension is missing. (Normalized loss targets are the loss kernels' job, not patchify's.)"""
from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys
import warnings

import pytest
import torch
from tolerance import assert_within
from torch.utils.dlpack import to_dlpack

from maskspec_fast.layers import PatchEmbed
from maskspec_fast.ops import patchify_fused as pf
from maskspec_fast.ops import patchify_ref, unpatchify

C = pf._load_ext()
needs_ext = pytest.mark.skipif(C is None, reason=f"maskspec_fast._C not built ({pf._ext_error})")
HAS_TRITON = importlib.util.find_spec("triton") is not None
interp = pytest.mark.skipif(
    not HAS_TRITON or os.environ.get("TRITON_INTERPRET") != "1", reason="needs triton with TRITON_INTERPRET=1"
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, F, T, patch): the pre-training and fine-tuning shapes, T not a multiple of p, B = 1, odd patch sizes,
# a single patch row/column (the reference patchify is then a view)
SHAPES = [
    (2, 128, 992, 16),
    (1, 128, 1000, 16),
    (3, 37, 53, 16),
    (1, 16, 16, 16),
    (2, 16, 100, 16),
    (2, 31, 43, 5),
    (1, 17, 61, 8),
    (2, 9, 9, 3),
]


def _spec(b: int, f: int, t: int, dtype: torch.dtype) -> torch.Tensor:
    # log-mel-like values: a large common offset makes the mean subtraction matter
    return (torch.randn(b, f, t) * 3.0 - 5.0).to(dtype)


def _random_shape() -> tuple[int, int, int, int]:
    p = int(torch.randint(2, 17, ()))
    b = int(torch.randint(1, 4, ()))
    f = int(torch.randint(p, 5 * p, ()))
    t = int(torch.randint(p, 9 * p, ()))
    return b, f, t, p


def test_extension_loaded_when_required():
    """CI of the extension sets MASKSPEC_EXT_REQUIRED=1 so a broken build fails instead of skipping."""
    if os.environ.get("MASKSPEC_EXT_REQUIRED") == "1":
        assert C is not None, pf._ext_error
    elif C is None:
        pytest.skip(f"extension not built: {pf._ext_error}")
    assert C.__abi__ == pf._ABI
    assert "C++ extension" in pf.status()


# ---------------------------------------------------------------------------------------------------------
# forward vs reference (through the public ops: C++ on CPU)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,f,t,p", SHAPES)
def test_patchify_matches_reference(b, f, t, p, dtype):
    x = _spec(b, f, t, dtype)
    patches = pf.patchify_fused(x, p)
    assert patches.dtype == dtype and patches.shape == (b, (f // p) * (t // p), p * p)
    assert torch.equal(patches, patchify_ref(x, p))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_shapes_and_4d_input(dtype):
    for _ in range(6):
        b, f, t, p = _random_shape()
        x = _spec(b, 1, f * t, dtype).reshape(b, 1, f, t)  # (B, 1, F, T) image
        patches = pf.patchify_fused(x, p)
        assert torch.equal(patches, patchify_ref(x, p)), (b, f, t, p)


@needs_ext
def test_strided_inputs():
    x = _spec(3, 80, 300, torch.float32)
    for view in (x[:, 5:70, 7:290], x[::2], x[:, :, ::2], x.transpose(1, 2).contiguous().transpose(1, 2)):
        patches = pf.patchify_fused(view, 16)
        assert torch.equal(patches, patchify_ref(view, 16))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,f,t,p", SHAPES[2:])
def test_unpatchify_matches_reference(b, f, t, p, dtype):
    gf, gt = f // p, t // p
    patches = torch.randn(b, gf * gt, p * p).to(dtype)
    img = pf.unpatchify_fused(patches, (gf, gt), p)
    assert torch.equal(img, unpatchify(patches, (gf, gt), p))
    assert torch.equal(pf.patchify_fused(img, p), patches)


# ---------------------------------------------------------------------------------------------------------
# the extension directly: poisoned outputs, thread-count independence, 16-bit decoding


def _poisoned(*shape, dtype):
    return torch.full(shape, float("nan"), dtype=dtype)


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_independent_of_thread_count(dtype):
    b, f, t, p = 3, 128, 1000, 16
    x = _spec(b, f, t, dtype)
    n = (f // p) * (t // p)
    runs = []
    for threads in (1, 2, 3):
        out = _poisoned(b, n, p * p, dtype=dtype)
        C.patchify(to_dlpack(x), p, to_dlpack(out), threads)
        img = _poisoned(b, f, t, dtype=dtype)
        C.unpatchify(to_dlpack(out), f // p, t // p, p, to_dlpack(img), threads)
        runs.append((out, img))
    assert torch.equal(runs[0][0], patchify_ref(x, p))
    assert not runs[0][1].isnan().any()  # every image element written, dropped frames zero
    assert torch.equal(runs[0][1][:, :, 992:], torch.zeros(b, f, t - 992, dtype=dtype))
    for other in runs[1:]:
        for a, o in zip(runs[0], other, strict=True):
            assert torch.equal(a.view(torch.uint8), o.view(torch.uint8))  # bitwise, NaN-safe


@needs_ext
@pytest.mark.parametrize("dtype,int_view", [(torch.float16, torch.int16), (torch.bfloat16, torch.int16)])
def test_16bit_decoding_all_bit_patterns(dtype, int_view):
    raw = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(int_view)  # every 16-bit pattern
    src = raw.view(dtype)
    out = torch.empty(src.shape, dtype=torch.float32)
    C.to_float32(to_dlpack(src), to_dlpack(out))
    want = src.float()
    nan = want.isnan()
    assert torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].view(torch.int32), want[~nan].view(torch.int32))  # exact, signed zeros too


# ---------------------------------------------------------------------------------------------------------
# autograd and the op registrations


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,p", [((2, 40, 70), 16), ((1, 1, 33, 50), 8), ((2, 16, 16), 16)])
def test_gradient_matches_reference(shape, p, dtype):
    x = torch.randn(*shape).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    patches = pf.patchify_fused(x, p)
    assert patches.requires_grad
    g = torch.randn_like(patches)
    (gx,) = torch.autograd.grad(patches, x, g)
    (gx_ref,) = torch.autograd.grad(patchify_ref(x_ref, p), x_ref, g)
    assert gx.shape == x.shape and torch.equal(gx, gx_ref)  # zero in the dropped frames as well


def test_unpatchify_gradient_matches_reference():
    gf, gt, p = 3, 5, 4
    patches = torch.randn(2, gf * gt, p * p, requires_grad=True)
    img = pf.unpatchify_fused(patches, (gf, gt), p)
    g = torch.randn_like(img)
    (gp,) = torch.autograd.grad(img, patches, g)
    (gp_ref,) = torch.autograd.grad(unpatchify(patches, (gf, gt), p), patches, g)
    assert torch.equal(gp, gp_ref)


def test_opcheck_registrations():
    """Schema, fake (meta) kernels and autograd registration checked by torch's own tester."""
    x = torch.randn(2, 35, 50, requires_grad=True)
    torch.library.opcheck(torch.ops.maskspec.patchify.default, (x, 16))
    patches = torch.randn(2, 6, 256, requires_grad=True)
    torch.library.opcheck(torch.ops.maskspec.unpatchify.default, (patches, 2, 3, 16, 35, 50))


def test_patch_tokens_fused_matches_conv():
    embed = PatchEmbed(16, 24)
    img = torch.randn(2, 1, 64, 203)
    embed64 = copy.deepcopy(embed).double()
    tokens = pf.patch_tokens_fused(img, embed)
    assert tokens.shape == (2, 4 * 12, 24)
    # floor of the rule: each token is a dot product of p * p = 256 terms
    assert_within(tokens, embed(img), embed64(img.double()), terms=256, name="tokens")
    img.requires_grad_()
    img64 = img.detach().double().requires_grad_()
    g = torch.randn(2, 48, 24)
    (gi,) = torch.autograd.grad(pf.patch_tokens_fused(img, embed), img, g)
    (gi_ref,) = torch.autograd.grad(embed(img), img, g)
    (gi_64,) = torch.autograd.grad(embed64(img64), img64, g.double())
    assert_within(gi, gi_ref, gi_64, terms=24, name="input gradient")


# ---------------------------------------------------------------------------------------------------------
# errors that name the tensor


@needs_ext
def test_extension_errors_name_the_tensor():
    x = torch.randn(2, 32, 48)
    out = torch.empty(2, 6, 256)
    dl = to_dlpack
    cases = [
        (lambda: C.patchify(dl(x[0]), 16, dl(out)), ValueError, r"spec: expected 3-D \(B, F, T\), got 2-D \(32, 48\)"),
        (lambda: C.patchify(dl(x.long()), 16, dl(out)), TypeError, "spec: expected float32, float16 or bfloat16, got int64"),
        (lambda: C.patchify(dl(x.double()), 16, dl(out)), TypeError, "spec: unsupported dtype float64"),
        (lambda: C.patchify(dl(x), 16, dl(out.half())), TypeError, r"patches: expected float32 \(the dtype of spec\)"),
        (lambda: C.patchify(dl(x), 16, dl(out[:, :5])), ValueError, r"patches: expected shape \(2, 6, 256\), got \(2, 5, 256\)"),
        (lambda: C.patchify(dl(x), 16, dl(torch.empty(256, 6, 2).permute(2, 1, 0))), ValueError, "patches: expected a contiguous tensor"),
        (lambda: C.patchify(dl(x), 64, dl(out)), ValueError, "spec: spectrogram 32 x 48 is smaller than one 64 x 64 patch"),
        (lambda: C.patchify(dl(x), 0, dl(out)), ValueError, "patch: must be >= 1"),
        (lambda: C.patchify(dl(x[:, :, ::2]), 16, dl(out)), ValueError, "spec: expected unit stride along time"),
        (lambda: C.patchify(x, 16, dl(out)), TypeError, "spec: expected a DLPack capsule"),
        (lambda: C.unpatchify(dl(out), 2, 2, 16, dl(x)), ValueError, r"patches: shape \(2, 6, 256\) does not match grid \(2, 2\)"),
        (lambda: C.unpatchify(dl(out), 2, 3, 16, dl(torch.empty(2, 31, 48))), ValueError, "out: shape"),
    ]
    for call, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            call()


def test_public_errors():
    with pytest.raises(ValueError, match="expected a spectrogram"):
        pf.patchify_fused(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="smaller than one 16 x 16 patch"):
        pf.patchify_fused(torch.randn(2, 15, 64))
    with pytest.raises(ValueError, match="do not match grid"):
        pf.unpatchify_fused(torch.randn(2, 6, 256), (2, 2), 16)


# ---------------------------------------------------------------------------------------------------------
# fallback: quiet at import, one warning when the fused path needs the missing extension


def test_import_is_silent():
    code = "import warnings; warnings.simplefilter('error'); import maskspec_fast.ops.patchify_fused as m"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""


def test_fallback_warns_once_and_matches_reference(monkeypatch):
    monkeypatch.setattr(pf, "_ext", None)
    monkeypatch.setattr(pf, "_ext_tried", True)
    monkeypatch.setattr(pf, "_ext_error", "simulated: not built")
    monkeypatch.setattr(pf, "_warned", set())
    x = torch.randn(2, 1, 40, 75, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="simulated: not built"):
        patches = pf.patchify_fused(x, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = pf.patchify_fused(x, 16)
        img = pf.unpatchify_fused(patches.detach(), (2, 4), 16)
    assert torch.equal(patches, patchify_ref(x, 16)) and torch.equal(again, patches)
    assert torch.equal(img, unpatchify(patches.detach(), (2, 4), 16))
    (gx,) = torch.autograd.grad(patches, x, torch.ones_like(patches))
    inside = torch.zeros_like(gx, dtype=torch.bool)
    inside[..., :32, :64] = True  # the 2 x 4 grid of 16 x 16 patches; dropped rows/frames get zero gradient
    assert gx[inside].eq(1).all() and gx[~inside].eq(0).all()
    assert "PyTorch reference" in pf.status() and "simulated" in pf.status()


# ---------------------------------------------------------------------------------------------------------
# Triton kernels: in the interpreter on CPU, compiled on CUDA


@interp
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_interpreter_matches_reference(dtype):
    from maskspec_fast.ops import triton_patchify as tp

    b, f, t, p = 2, 20, 37, 8  # 2 x 4 grid, T not a multiple of p
    x = _spec(b, f, t, dtype)
    patches = tp.patchify_triton(x, p)
    assert torch.equal(patches, patchify_ref(x, p))
    img = tp.unpatchify_triton(patches, f // p, t // p, p, f, t)
    assert torch.equal(img[:, :16, :32], unpatchify(patches, (2, 4), p))
    assert img[:, 16:].eq(0).all() and img[:, :, 32:].eq(0).all()
    odd = tp.patchify_triton(x[:, 1:, 2:], 5)  # non-power-of-2 patch: masked tile lanes, strided input
    assert torch.equal(odd, patchify_ref(x[:, 1:, 2:], 5))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_ops_match_reference(dtype):
    x = _spec(4, 128, 1000, dtype).cuda().requires_grad_()
    patches = pf.patchify_fused(x, 16)
    assert torch.equal(patches, patchify_ref(x, 16))
    g = torch.randn_like(patches)
    (gx,) = torch.autograd.grad(patches, x, g)
    (gx_ref,) = torch.autograd.grad(patchify_ref(x, 16), x, g)
    assert torch.equal(gx, gx_ref)
