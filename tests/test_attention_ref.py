"""``attention_ref`` is the fp32 oracle even under autocast (matmul would otherwise run in bf16), and being fp32
it is a much tighter oracle than a bf16 attention, so "fast error <= 2x reference error" tests keep their bite."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maskspec_fast.ops.attention import attention_ref


def _qkv(dtype=torch.float32, b=2, h=3, n=67, d=16):
    return [torch.randn(b, h, n, d, dtype=dtype) * 2 for _ in range(3)]


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_attention_ref_ignores_bf16_autocast(in_dtype):
    q, k, v = _qkv(in_dtype)
    pad = torch.zeros(2, q.shape[2], dtype=torch.bool)
    pad[1, 40:] = True
    plain = attention_ref(q, k, v, pad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = attention_ref(q, k, v, pad)
    assert under.dtype == in_dtype
    assert torch.equal(under, plain)  # same fp32 computation, bit for bit


def test_attention_ref_is_fp32_accurate_under_autocast():
    """Error against fp64: the reference under bf16 autocast stays at fp32 level, far below a bf16 attention."""
    q, k, v = _qkv()
    gold = attention_ref(q.double(), k.double(), v.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = attention_ref(q, k, v)
        low = F.scaled_dot_product_attention(q, k, v)  # what a bf16 fast path computes
    assert low.dtype == torch.bfloat16
    err_ref = (ref.double() - gold).abs().max().item()
    err_low = (low.double() - gold).abs().max().item()
    assert err_ref < 1e-5, err_ref
    assert err_ref < err_low / 100, (err_ref, err_low)  # the oracle is two orders tighter than what it judges
