"""Classifier pooling per frequency row (ModelConfig.pool = "freq") and its structured (time-column) patchout."""
import pytest
import torch

from maskspec_fast import Classifier, Model, ModelConfig


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
    torch.testing.assert_close(clf.embed(x), want)
    torch.testing.assert_close(clf(x), clf.head(want))


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
