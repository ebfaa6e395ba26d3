"""Per-layer embeddings (``Classifier.embed(..., layers=...)``) and frame embeddings (``Classifier.embed_frames``):
each hidden state pooled exactly as the clip embedding is, held to the blocks run by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from tolerance import assert_within

from maskspec_fast import Classifier, ModelConfig
from maskspec_fast.model import pool_patch_tokens

TERMS = 192  # floor of the rule: an fp32 dot product of the tiny preset's width rounds ~192 times


def make_clf(pool: str, depth: int = 3) -> Classifier:
    return Classifier(ModelConfig.from_preset("tiny", depth=depth, frames=112, pool=pool), num_classes=3).eval()


def hidden_states(clf: Classifier, spec: torch.Tensor) -> list[torch.Tensor]:
    """The ``depth + 1`` token sequences ``(B, 1+L, D)``: before the first block, then after each block."""
    img = spec.unsqueeze(1)[..., : spec.shape[-1] // 16 * 16]
    grid = (img.shape[-2] // 16, img.shape[-1] // 16)
    pos = clf.encoder_pos(grid)
    x = torch.cat([(clf.cls_token + pos[:, :1]).expand(img.shape[0], -1, -1), clf.patch_embed(img) + pos[:, 1:]], 1)
    out = [x]
    for blk in clf.blocks:
        x = blk(x)
        out.append(x)
    return out


@pytest.mark.parametrize("pool", ["mean", "freq_stats"])
def test_layers_are_the_hidden_states_pooled_like_the_clip_embedding(pool):
    clf = make_clf(pool)
    spec = torch.randn(int(torch.randint(1, 4, ())), 128, int(torch.randint(32, 112, ())))  # odd lengths too
    with torch.no_grad():
        hs = hidden_states(clf, spec)
        gold = copy.deepcopy(clf).double()
        hs64 = hidden_states(gold, spec.double())
        layers = [0, 2, -1]
        out = clf.embed(spec, layers=layers)
        assert out.shape == (spec.shape[0], 3, clf.config.pooled_dim)
        assert torch.equal(clf.embed(spec, layers=[-1])[:, 0], clf.embed(spec))  # the last block is the clip embedding
        for j, i in enumerate(layers):
            ref, ref64 = (pool_patch_tokens(h[i][:, 1:], c.config.grid_f, pool, None, c.fc_norm,
                                            getattr(c, "std_norm", None)) for h, c in ((hs, clf), (hs64, gold)))
            assert_within(out[:, j], ref, ref64, terms=TERMS, name=f"layer {i}")


def test_layers_with_padding_match_each_clip_alone():
    clf = make_clf("mean")
    a, b = torch.randn(128, 112), torch.randn(128, 64)
    batch = torch.stack([a, torch.nn.functional.pad(b, (0, 48))])
    with torch.no_grad():
        out = clf.embed(batch, torch.tensor([112, 64]), layers=[1, 3])
        alone64 = copy.deepcopy(clf).double().embed(b.unsqueeze(0).double(), layers=[1, 3])[0]
        assert_within(out[1], clf.embed(b.unsqueeze(0), layers=[1, 3])[0], alone64, terms=TERMS, name="padded")


def test_layers_out_of_range_or_empty_are_errors():
    clf = make_clf("mean", depth=2)
    spec = torch.randn(1, 128, 64)
    with pytest.raises(ValueError, match="layer 3 out of range"):
        clf.embed(spec, layers=[3])
    with pytest.raises(ValueError, match="layers is empty"):
        clf.embed(spec, layers=[])
    assert clf.embed(spec, layers=[-3]).shape == (1, 1, 192)  # -3 = index 0 with depth 2


def test_frames_are_fc_norm_of_each_columns_frequency_mean():
    clf = make_clf("mean")
    spec = torch.randn(2, 128, 100)  # 6 whole columns, 4 frames dropped
    with torch.no_grad():
        gold = copy.deepcopy(clf).double()
        frames = []
        for c, x in ((clf, spec), (gold, spec.double())):
            tokens = hidden_states(c, x)[-1][:, 1:].reshape(2, 8, 6, -1)  # (B, G_f, G_t, D)
            frames.append(c.fc_norm(tokens.mean(1)))
        assert_within(clf.embed_frames(spec), frames[0], frames[1], terms=TERMS, name="frames")
