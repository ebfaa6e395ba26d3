"""Triton patchify kernels (patchify, unpatchify) in the interpreter against the references, so the newest-Triton
run of the ``tests/test_triton_*.py`` files covers every kernel. Patches are bit copies (``torch.equal``).
"""
from __future__ import annotations

import pytest
import torch

from maskspec_fast.ops import _triton_utils, patchify_ref, unpatchify

pytestmark = pytest.mark.skipif(
    not (_triton_utils.HAS_TRITON and _triton_utils.interpret_mode()), reason="needs triton with TRITON_INTERPRET=1"
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, F, T, p): T not a multiple of p with B = 1, a non-power-of-two patch (masked tile lanes), every dtype; and
# MaskSpec's 128 x 992 pre-training input (8 x 62 grid) in bf16 only (the interpreter runs one program per patch,
# a few ms each: 496 patches x 3 kernels per dtype cost seconds for no new code path)
CASES = [(s, dt) for s in [(1, 37, 53, 16), (2, 31, 43, 5), (3, 16, 40, 8)] for dt in DTYPES]
CASES.append(((1, 128, 992, 16), torch.bfloat16))


@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_patchify_and_unpatchify_match_reference(shape, dtype):
    from maskspec_fast.ops import triton_patchify as tp

    b, f, t, p = shape
    gf, gt = f // p, t // p
    x = (torch.randn(b, f + 1, t) * 3 - 5).to(dtype)[:, 1:]  # a strided view (row stride T, batch (F+1)*T)
    patches = tp.patchify_triton(x, p)
    ref = patchify_ref(x, p)  # (B, L, p*p)
    assert torch.equal(patches, ref)

    img = tp.unpatchify_triton(patches, gf, gt, p, f, t)  # (B, F, T), zeros off the grid
    assert torch.equal(img[:, : gf * p, : gt * p], unpatchify(ref, (gf, gt), p))
    assert img[:, gf * p :].eq(0).all() and img[:, :, gt * p :].eq(0).all()

