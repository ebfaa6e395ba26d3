"""Classifier pooling per frequency row (ModelConfig.pool = "freq") and its structured (time-column) patchout."""
import copy

import pytest
import torch
from tolerance import assert_within

from maskspec_fast import Classifier, Model, ModelConfig

TERMS = 64  # floor of the rule: an fp32 dot product of the models' width rounds at most ~64 times


def _config(**kw):
    return ModelConfig(frames=112, embed_dim=20, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                       decoder_num_heads=2, **kw)


def test_freq_pool_is_the_per_row_mean_normed_and_concatenated():
    torch.manual_seed(torch.seed() % 2**31)
    clf = Classifier(_config(pool="freq"), 5).eval()
    x = torch.randn(3, 128, 112)
    tokens = clf.forward_features(x)[:, 1:]  # (3, 8 * 7, 20), row-major over (freq row, time column)
    want = clf.fc_norm(tokens.reshape(3, 8, 7, 20).mean(2)).flatten(1)
    assert clf.head.in_features == 8 * 20
    assert torch.equal(clf.embed(x), want)  # the same ops in the same order: exact
    assert torch.equal(clf(x), clf.head(want))


def test_structured_patchout_keeps_whole_time_columns():
    clf = Classifier(_config(pool="freq"), 4).train()
    clf.patchout = 8 * 3 + 5  # -> 3 whole columns of 8 rows dropped
    tokens = clf.forward_features(torch.randn(2, 128, 112))
    assert tokens.shape == (2, 1 + 8 * (7 - 3), 20)
    assert clf(torch.randn(2, 128, 112)).shape == (2, 4)


def test_default_pool_is_mean_and_loads_from_a_pretrained_model(tmp_path):
    m = Model(_config())
    m.save_pretrained(tmp_path / "m")
    clf = Classifier.from_pretrained(tmp_path / "m", num_classes=3, pool="freq")
    assert clf.config.pool == "freq" and clf.head.in_features == 160
    assert Classifier.from_pretrained(tmp_path / "m", num_classes=3).head.in_features == 20
    with pytest.raises(ValueError, match="pool"):
        _config(pool="max")


def test_freq_stats_pool_appends_each_rows_std_over_time():
    torch.manual_seed(torch.seed() % 2**31)
    clf = Classifier(_config(pool="freq_stats"), 5).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped or missing norm shows
        for norm in (clf.fc_norm, clf.std_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    x = torch.randn(3, 128, 112)
    grid = clf.forward_features(x)[:, 1:].reshape(3, 8, 7, 20).double()
    std = ((grid - grid.mean(2, keepdim=True)).square().sum(2) / 6 + 1e-6).sqrt()  # unbiased, 7 columns
    want = torch.cat([clf.fc_norm(grid.mean(2).float()).flatten(1), clf.std_norm(std.float()).flatten(1)], 1)
    fc_norm64, std_norm64 = (copy.deepcopy(n).double() for n in (clf.fc_norm, clf.std_norm))
    precise = torch.cat([fc_norm64(grid.mean(2)).flatten(1), std_norm64(std).flatten(1)], 1)
    assert clf.head.in_features == 2 * 8 * 20 == clf.config.pooled_dim
    assert_within(clf.embed(x), want, precise, terms=TERMS, name="freq_stats embedding")


def test_freq_stats_pool_ignores_padding_and_trains_with_column_patchout():
    clf = Classifier(_config(pool="freq_stats"), 4).eval()
    x = torch.randn(2, 128, 112)
    short = clf.embed(x[..., :64])  # 4 whole columns
    padded = clf.embed(torch.cat([x[..., :64], torch.randn(2, 128, 48)], -1), lengths=torch.tensor([64, 64]))
    short64 = copy.deepcopy(clf).double().embed(x[..., :64].double())
    assert_within(padded, short, short64, terms=TERMS, name="padded")
    clf.train()
    clf.patchout = 8 * 5  # 2 columns left: the std is still defined
    loss = clf(x).logsumexp(-1).sum()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in clf.parameters() if p.grad is not None)


def test_freq_stats_classifier_starts_from_a_pretrained_model_with_fresh_pooling_norms(tmp_path):
    m = Model(_config())
    m.save_pretrained(tmp_path / "m")
    clf = Classifier.from_pretrained(tmp_path / "m", num_classes=3, pool="freq_stats")
    torch.testing.assert_close(clf.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)
    clf.save_pretrained(tmp_path / "c")
    again = Classifier.from_pretrained(tmp_path / "c")
    assert again.config.pool == "freq_stats"
    torch.testing.assert_close(again.std_norm.weight, clf.std_norm.weight)


@pytest.mark.parametrize("pool", ["mean", "freq", "freq_stats"])
def test_pooling_without_padding_equals_the_padding_aware_branch_with_every_token_kept(pool):
    from maskspec_fast.model import pool_patch_tokens

    gf, gt, d = 8, int(torch.randint(1, 7, ())), 12
    tokens = torch.randn(3, gf * gt, d) * 2 + 1
    fast = pool_patch_tokens(tokens, gf, pool)
    masked = pool_patch_tokens(tokens, gf, pool, keep=torch.ones(3, gf * gt, dtype=torch.bool))
    precise = pool_patch_tokens(tokens.double(), gf, pool)
    assert fast.shape == masked.shape and torch.isfinite(fast).all()  # one time column: std 0, not NaN
    # floor of the rule: a mean / variance over gt * gf tokens, then a layer norm over d
    assert_within(masked, fast, precise, terms=gf * gt + d, name=pool)
    if pool == "freq_stats":  # the std half against torch's unbiased std (one column: defined as 0)
        def std_half(t: torch.Tensor) -> torch.Tensor:
            t = t.reshape(3, gf, gt, d)
            std = t.std(2) if gt > 1 else t.new_zeros(3, gf, d)
            return torch.nn.functional.layer_norm((std.square() + 1e-6).sqrt(), (d,)).flatten(1)

        assert_within(fast[:, gf * d:], std_half(tokens), std_half(tokens.double()), terms=gf * gt + d,
                      name="std half")
