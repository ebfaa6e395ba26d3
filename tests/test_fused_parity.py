"""The fused model computes the same function as the reference: loss, pred and every parameter gradient, in fp32
and in bf16; 20 training steps give matching loss curves. Every comparison is the suite's rule
(``tests/tolerance.py``): the fused path errs against the reference computed in float64 at most twice as much as
the reference itself does, plus the dtype's bound. On CPU the Triton parts run in the interpreter (conftest sets
TRITON_INTERPRET=1)."""
import copy
import inspect

import pytest
import torch
from tolerance import assert_within

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.ops.attention import attention, attention_ref

TERMS = 64  # floor: an fp32 dot product of the models' width (48..64) rounds at most ~64 times


def cfg(**kw):
    base = dict(embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=40, decoder_depth=1, decoder_num_heads=2,
                frames=80, n_mels=32)  # 2 x 5 = 10 patches: L not a power of two, K = 2
    base.update(kw)
    return ModelConfig(**base)


def pair(c):
    ref = Model(c, fused=False)
    fast = Model(c, fused=True)
    fast.load_state_dict(ref.state_dict(), strict=True)
    return ref, fast


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("return_pred", [True, False])
@pytest.mark.parametrize("masks_per_clip", [1, 2])
def test_fp32_loss_and_all_gradients_match(return_pred, masks_per_clip):
    c = cfg()
    ref, fast = pair(c)
    spec = torch.randn(3, 32, 85)  # 85 frames: 5 whole patches, 5 frames dropped
    noise = torch.rand(3 * masks_per_clip, c.num_patches)
    gold = copy.deepcopy(ref).double()
    l64, p64, _ = gold(spec.double(), noise=noise, masks_per_clip=masks_per_clip)
    lr_, pr, mr = ref(spec, noise=noise, masks_per_clip=masks_per_clip)
    lf, pf, mf = fast(spec, noise=noise, masks_per_clip=masks_per_clip, return_pred=return_pred)
    assert torch.equal(mr, mf)
    assert_within(lf, lr_, l64, terms=TERMS, name="loss")
    if return_pred:
        assert_within(pf, pr, p64, terms=TERMS, name="pred")
    else:
        assert pf is None
    l64.backward()
    lr_.backward()
    lf.backward()
    gr, gf, g64 = grads(ref), grads(fast), grads(gold)
    assert gr.keys() == gf.keys() == g64.keys() and len(gr) > 10
    for name in gr:
        assert_within(gf[name], gr[name], g64[name], terms=TERMS, name=name)


def test_bf16_error_at_most_twice_the_reference_error():
    c = cfg(embed_dim=64, num_heads=4, decoder_embed_dim=64, decoder_num_heads=4)
    ref, fast = pair(c)
    gold = copy.deepcopy(ref).double()
    spec = torch.randn(4, 32, 80)
    noise = torch.rand(4, c.num_patches)
    loss64 = gold(spec.double(), noise=noise)[0]
    loss64.backward()
    g64 = grads(gold)
    errs = {}
    for name, model in (("ref", ref), ("fused", fast)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(spec, noise=noise, return_pred=False)[0] if name == "fused" else model(spec, noise=noise)[0]
        loss.backward()
        g = grads(model)
        errs[name] = (abs(loss.double() - loss64).item(),
                      max(((g[k].double() - g64[k]).norm() / (g64[k].norm() + 1e-12)).item() for k in g64))
    # the rule on the loss and on each gradient's relative error (against 0, the error of the float64 gradient);
    # floor: one bf16 rounding of the value (u = 2**-9 of an O(1) loss / of a unit relative error)
    assert_within(errs["fused"][0], errs["ref"][0], 0.0, torch.bfloat16, scale=abs(loss64.item()), name="bf16 loss")
    assert_within(errs["fused"][1], errs["ref"][1], 0.0, torch.bfloat16, scale=1.0, name="bf16 gradients")


def test_twenty_training_steps_give_matching_loss_curves():
    c = cfg()
    ref, fast = pair(c)
    gold = copy.deepcopy(ref).double()
    models = (ref, fast, gold)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95)) for m in models]
    g = torch.Generator().manual_seed(0)
    curves = ([], [], [])
    for _ in range(20):
        spec = torch.randn(4, 32, 80, generator=g)
        noise = torch.rand(4, c.num_patches, generator=g)
        for i, (m, opt) in enumerate(zip(models, opts)):
            x = spec.double() if m is gold else spec
            loss = m(x, noise=noise)[0] if i != 1 else m(x, noise=noise, return_pred=False)[0]
            loss.backward()
            opt.step()
            opt.zero_grad()
            curves[i].append(loss.item())
    assert_within(curves[1], curves[0], curves[2], terms=TERMS, name="loss curve")
    assert curves[0][-1] < curves[0][0]


def test_state_dicts_move_between_paths(tmp_path):
    c = cfg()
    fast = Model(c, fused=True)
    fast.save_pretrained(tmp_path / "m")
    ref = Model.from_pretrained(tmp_path / "m", fused=False)
    spec, noise = torch.randn(2, 32, 80), torch.rand(2, c.num_patches)
    gold = copy.deepcopy(ref).double()
    assert_within(fast(spec, noise=noise)[0], ref(spec, noise=noise)[0], gold(spec.double(), noise=noise)[0],
                  terms=TERMS, name="loss")
    clf_f = Classifier(c, 5, fused=True).eval()
    clf_r = Classifier(c, 5, fused=False).eval()
    clf_r.load_state_dict(clf_f.state_dict(), strict=True)
    clf_64 = copy.deepcopy(clf_r).double()
    assert_within(clf_f(spec), clf_r(spec), clf_64(spec.double()), terms=TERMS, name="logits")


@pytest.mark.parametrize("n", [1, 125, 497])
def test_attention_backends_on_odd_lengths_with_padding(n):
    q, k, v = (torch.randn(2, 2, n, 16) for _ in range(3))
    pad = torch.zeros(2, n, dtype=torch.bool)
    pad[1, n // 2 + 1 :] = True  # second sample padded after its first half (none when n == 1)
    ref, ref_full = attention_ref(q, k, v, pad), attention_ref(q, k, v)
    q64, k64, v64 = q.double(), k.double(), v.double()
    gold, gold_full = attention_ref(q64, k64, v64, pad), attention_ref(q64, k64, v64)
    for backend in ("sdpa", "flash_attn"):  # flash_attn falls back to SDPA on CPU / with padding
        # floor: n keys summed in the softmax and in P @ V
        assert_within(attention(q, k, v, pad, backend=backend), ref, gold, terms=n + 16, name=backend)
        assert_within(attention(q, k, v, None, backend=backend), ref_full, gold_full, terms=n + 16, name=backend)


@pytest.mark.gpu
def test_fused_model_matches_reference_on_gpu_bf16():
    c = ModelConfig.from_preset("tiny", frames=256)
    ref, fast = pair(c)
    ref, fast = ref.cuda(), fast.cuda()
    gold = copy.deepcopy(ref).double()
    spec = torch.randn(8, 128, 256, device="cuda")
    noise = torch.rand(8, c.num_patches, device="cuda")
    loss64 = gold(spec.double(), noise=noise)[0]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        lr_ = ref(spec, noise=noise)[0]
        lf = fast(spec, noise=noise, return_pred=False)[0]
    assert_within(lf, lr_, loss64, torch.bfloat16, name="bf16 loss")


class _FakeFlash:
    """Stand-in for the flash-attn package with its packed signatures, computed by the reference, so the packing,
    cu_seqlens and unpacking plumbing is tested on CPU."""

    calls: list = []

    @staticmethod
    def flash_attn_qkvpacked_func(qkv):
        _FakeFlash.calls.append("packed")
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return attention_ref(q, k, v).transpose(1, 2)

    @staticmethod
    def flash_attn_varlen_qkvpacked_func(packed, cu_seqlens, max_seqlen):
        _FakeFlash.calls.append("varlen")
        outs = []
        for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            assert e - s <= max_seqlen
            q, k, v = packed[s:e].unsqueeze(0).permute(2, 0, 3, 1, 4).unbind(0)  # (1, H, n, d)
            outs.append(attention_ref(q, k, v)[0].transpose(0, 1))  # (n, H, d)
        return torch.cat(outs)


def test_flash_attn_packing_and_varlen_plumbing(monkeypatch):
    import maskspec_fast.ops.attention as att

    assert inspect.ismodule(att)  # the module, not its function of the same name

    monkeypatch.setattr(att, "_flash_module", lambda: _FakeFlash)
    monkeypatch.setattr(att, "_flash_eligible", lambda t: True)
    _FakeFlash.calls.clear()
    c = cfg(frames=128)
    ref = Classifier(c, 3, fused=False).eval()
    fast = Classifier(c, 3, fused=False).eval()
    fast.load_state_dict(ref.state_dict())
    for blk in fast.blocks:
        blk.attn.attend = att.packed_attention("flash_attn")
    spec = torch.randn(3, 32, 128)
    lengths = torch.tensor([128, 70, 33])
    gold = copy.deepcopy(ref).double()
    assert_within(fast(spec), ref(spec), gold(spec.double()), terms=TERMS, name="packed")
    assert_within(fast(spec, lengths), ref(spec, lengths), gold(spec.double(), lengths), terms=TERMS, name="varlen")
    assert "packed" in _FakeFlash.calls and "varlen" in _FakeFlash.calls
