"""Reference ops against the definitions in docs/MASKSPEC.md: hand-computed small cases and fresh random inputs."""
import pytest
import torch
from tolerance import assert_dtype_bound, assert_within

from maskspec_fast.ops import (
    gather_visible_ref,
    masked_mse_ref,
    normalize_patches,
    num_visible,
    patchify_ref,
    random_masking,
    sincos_2d,
    unpatchify,
    unshuffle_ref,
)
from maskspec_fast.ops.attention import attention, attention_ref
from maskspec_fast.ops.pos_embed import resize_pos_embed


@pytest.mark.parametrize("b,f,t,p", [(1, 16, 16, 16), (2, 128, 992, 16), (3, 32, 1000, 16), (1, 8, 13, 4)])
def test_patchify_definition(b, f, t, p):
    spec = torch.randn(b, f, t)
    out = patchify_ref(spec, p)
    gf, gt = f // p, t // p
    assert out.shape == (b, gf * gt, p * p)
    for _ in range(20):  # out[b, i*gt + j, u*p + v] = spec[b, i*p + u, j*p + v]
        bi, i, j = torch.randint(b, ()).item(), torch.randint(gf, ()).item(), torch.randint(gt, ()).item()
        u, v = torch.randint(p, ()).item(), torch.randint(p, ()).item()
        assert out[bi, i * gt + j, u * p + v] == spec[bi, i * p + u, j * p + v]
    back = unpatchify(out, (gf, gt), p)
    assert torch.equal(back, spec[:, : gf * p, : gt * p])
    assert torch.equal(patchify_ref(spec.unsqueeze(1), p), out)  # (B, 1, F, T) form


def test_patchify_matches_conv_patch_embedding():
    """Patchify + Linear(256, D) with the flattened conv kernel equals Conv2d(1, D, 16, stride 16)."""
    conv = torch.nn.Conv2d(1, 7, 16, stride=16)
    spec = torch.randn(2, 1, 32, 50)
    ref = conv(spec).flatten(2).transpose(1, 2)
    with torch.no_grad():
        precise = conv.double()(spec.double()).flatten(2).transpose(1, 2)
        conv.float()
    lin = patchify_ref(spec) @ conv.weight.flatten(1).T + conv.bias
    assert_within(lin, ref, precise, torch.float32, terms=16 * 16 + 1, name="patchify + Linear")  # 256 products + bias


def test_patchify_too_small_is_value_error():
    with pytest.raises(ValueError, match="smaller than one"):
        patchify_ref(torch.randn(1, 128, 15))
    with pytest.raises(ValueError, match="expected a spectrogram"):
        patchify_ref(torch.randn(128, 100))


def test_random_masking_hand_case():
    # noise ranks: sample 0 keeps patches 2 and 0 (smallest noise), sample 1 keeps 3 and 1
    noise = torch.tensor([[0.2, 0.9, 0.1, 0.5], [0.8, 0.3, 0.7, 0.0]])
    x = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    xv, mask, ids_restore, ids_keep = random_masking(x, 0.5, noise)
    assert ids_keep.tolist() == [[2, 0], [3, 1]]
    assert mask.tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]
    assert xv[..., 0].tolist() == [[2.0, 0.0], [7.0, 5.0]]
    assert ids_restore.tolist() == [[1, 3, 0, 2], [3, 1, 2, 0]]


@pytest.mark.parametrize("b,n,d,r", [(1, 496, 8, 0.75), (3, 31, 5, 0.75), (2, 97, 3, 0.5), (1, 7, 2, 0.0)])
def test_random_masking_properties(b, n, d, r):
    x = torch.randn(b, n, d)
    noise = torch.rand(b, n)
    xv, mask, ids_restore, ids_keep = random_masking(x, r, noise)
    k = int(n * (1 - r))
    assert k == num_visible(n, r) and xv.shape == (b, k, d) and mask.shape == (b, n)
    assert torch.equal(mask.sum(1), torch.full((b,), float(n - k)))
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(ids_keep, ids_shuffle[:, :k])
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(n).expand(b, n))
    for bi in range(b):
        assert torch.equal(xv[bi], x[bi, ids_keep[bi]])
        assert mask[bi, ids_keep[bi]].sum() == 0
    assert num_visible(496, 0.75) == 124


def test_norm_pix_uses_unbiased_variance():
    p = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    mean, var = 3.0, ((4 + 1 + 0 + 9) / 3)  # unbiased: divide by n-1
    expected = (p.double() - mean) / (var + 1e-6) ** 0.5  # in float64: the definition, precisely
    assert_dtype_bound(normalize_patches(p), expected, torch.float32, terms=8, name="norm_pix")  # mean, var, rsqrt


def test_masked_mse_definition():
    b, n, k = 3, 29, 64
    pred, target = torch.randn(b, n, k), torch.randn(b, n, k) * 3 + 1
    mask = (torch.rand(b, n) > 0.5).float()
    mask[0, 0] = 1
    definition = lambda pr, tg, m: (((pr - tg) ** 2).mean(-1) * m).sum() / m.sum()  # noqa: E731
    t = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    t64 = (target.double() - target.double().mean(-1, keepdim=True)) / (
        target.double().var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    assert_within(masked_mse_ref(pred, target, mask), definition(pred, t, mask),
                  definition(pred.double(), t64, mask.double()), terms=k, name="norm_pix masked MSE")
    assert_within(masked_mse_ref(pred, target, mask, norm_pix=False), definition(pred, target, mask),
                  definition(pred.double(), target.double(), mask.double()), terms=k, name="raw masked MSE")
    for dt in (torch.float16, torch.bfloat16):  # low-precision inputs, fp32 math
        out = masked_mse_ref(pred.to(dt), target.to(dt), mask)
        assert out.dtype == torch.float32 and torch.isfinite(out)


def test_gather_and_unshuffle_definitions():
    b, n, d = 2, 13, 6
    x, pos = torch.randn(b, n, d), torch.randn(n, d)
    _, _, ids_restore, ids_keep = random_masking(x, 0.75, torch.rand(b, n))
    k = ids_keep.shape[1]
    g = gather_visible_ref(x, ids_keep, pos)
    for bi in range(b):
        assert torch.equal(g[bi], x[bi, ids_keep[bi]] + pos[ids_keep[bi]])
    tok = torch.randn(d)
    out = unshuffle_ref(g, tok, ids_restore, pos)
    for bi in range(b):
        for li in range(n):
            r = ids_restore[bi, li]
            want = (g[bi, r] if r < k else tok) + pos[li]
            assert torch.equal(out[bi, li], want)  # one addition, the same operands: exact


@pytest.mark.parametrize("n", [1, 5, 17])
def test_attention_backends_match_reference(n):
    q, k, v = (torch.randn(2, 3, n, 8) for _ in range(3))
    q64, k64, v64 = q.double(), k.double(), v.double()
    ref, gold = attention_ref(q, k, v), attention_ref(q64, k64, v64)
    # the reference is softmax(q k^T / sqrt(d)) v: within float32's bound of it computed in float64
    scores = (q64 @ k64.transpose(-1, -2) / 8**0.5).softmax(-1)
    assert_dtype_bound(ref, scores @ v64, terms=n + 8, name="attention_ref")
    assert_within(attention(q, k, v, backend="sdpa"), ref, gold, terms=n + 8, name="sdpa")
    pad = torch.zeros(2, n, dtype=torch.bool)
    if n > 1:
        pad[0, -1] = True
        masked = attention_ref(q, k, v, pad)
        assert_within(attention(q, k, v, pad, backend="sdpa"), masked, attention_ref(q64, k64, v64, pad),
                      terms=n + 8, name="sdpa padded")
        # the padded key gets no weight: changing its value changes nothing
        v2 = v.clone()
        v2[0, :, -1] += 100
        assert torch.equal(attention_ref(q, k, v2, pad)[0], masked[0])


def test_sincos_table_and_resize():
    tab = sincos_2d(16, (2, 5))
    assert tab.shape == (11, 16) and torch.all(tab[0] == 0)
    # first half encodes time (column), second half frequency (row)
    body = tab[1:].reshape(2, 5, 16)
    assert torch.equal(body[0, :, :8], body[1, :, :8]) and torch.equal(body[:, 0, 8:], body[:, 3, 8:])
    longer = sincos_2d(16, (2, 9)).unsqueeze(0)
    cropped = resize_pos_embed(longer, (2, 9), (2, 5))
    assert torch.equal(cropped[0], tab)  # crop of a sin-cos table = the smaller table, value for value
    grown = resize_pos_embed(tab.unsqueeze(0), (2, 5), (2, 9))
    assert grown.shape == (1, 19, 16)


def test_unpatchify_infers_the_grid_from_mel_rows():
    spec = torch.randn(2, 128, 992)
    assert torch.equal(unpatchify(patchify_ref(spec)), spec)
    with pytest.raises(ValueError, match="frequency rows"):
        unpatchify(torch.randn(1, 13, 256))
