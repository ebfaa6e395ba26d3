"""Model / Classifier: the MAE drop-in contract, presets, state-dict names, persistence, input checks."""
import copy

import pytest
import torch
from tolerance import assert_within

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.model import encoder_parameter_count
from maskspec_fast.ops import masked_mse_ref, patchify_ref

TERMS = 32  # floor of the rule: an fp32 dot product of the model's width (32) rounds ~32 times


def small_config(**kw):
    base = dict(embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=24, decoder_depth=1, decoder_num_heads=2,
                frames=64, n_mels=32)
    base.update(kw)
    return ModelConfig(**base)


def test_presets_match_paper():
    base = ModelConfig.from_preset("base")
    assert (base.embed_dim, base.depth, base.num_heads) == (768, 12, 12)
    assert (base.decoder_embed_dim, base.decoder_depth, base.decoder_num_heads) == (512, 8, 16)
    assert base.grid_size == (8, 62) and base.num_patches == 496
    assert (ModelConfig.from_preset("small").embed_dim, ModelConfig.from_preset("tiny").embed_dim) == (384, 192)
    n = encoder_parameter_count(Model(base))
    assert 85e6 < n < 87e6, n  # ~86M (docs/MASKSPEC.md)
    assert ModelConfig.from_preset("tiny", frames=256).num_patches == 128
    with pytest.raises(ValueError):
        ModelConfig.from_preset("huge")
    with pytest.raises(TypeError):
        ModelConfig.from_preset("tiny", nope=1)


def test_mae_state_dict_names():
    m = Model(ModelConfig.from_preset("tiny", depth=1, decoder_depth=1))
    keys = set(m.state_dict())
    for k in ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight",
              "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
              "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "decoder_embed.weight",
              "mask_token", "decoder_pos_embed", "decoder_blocks.0.attn.qkv.weight", "decoder_norm.weight",
              "decoder_pred.weight", "decoder_pred.bias"]:
        assert k in keys, k
    assert m.pos_embed.shape == (1, 497, 192) and not m.pos_embed.requires_grad
    c = Classifier(ModelConfig.from_preset("tiny", depth=1), 5)
    ck = set(c.state_dict())
    assert {"fc_norm.weight", "head.weight", "head.bias", "pos_embed"} <= ck and "norm.weight" not in ck


@pytest.mark.parametrize("shape", [(2, 32, 64), (1, 1, 32, 70)])
def test_forward_contract(shape):
    cfg = small_config()
    m = Model(cfg)
    spec = torch.randn(*shape)
    noise = torch.rand(shape[0], cfg.num_patches)
    loss, pred, mask = m(spec, mask_ratio=0.75, noise=noise)
    assert pred.shape == (shape[0], cfg.num_patches, 256) and mask.shape == (shape[0], cfg.num_patches)
    assert torch.equal(mask.sum(1), torch.full((shape[0],), float(cfg.num_patches - int(cfg.num_patches * 0.25))))
    # loss is the masked MSE of pred against the normalized patches, mask from the given noise
    img = spec.reshape(shape[0], 32, -1)[..., :64]
    assert torch.equal(loss, masked_mse_ref(pred, patchify_ref(img), mask))  # the same reference ops: exact
    ids_keep = torch.argsort(noise, 1)[:, : int(cfg.num_patches * 0.25)]
    assert torch.all(torch.gather(mask, 1, ids_keep) == 0)
    loss2, pred2, _ = m(spec, mask_ratio=0.75, noise=noise)  # same noise -> identical
    assert torch.equal(loss, loss2) and torch.equal(pred, pred2)
    loss.backward()
    assert m.patch_embed.proj.weight.grad is not None and m.mask_token.grad is not None


def test_fused_path_matches_reference_in_fp32():
    cfg = small_config()
    ref, fast = Model(cfg, fused=False), Model(cfg, fused=True)
    fast.load_state_dict(ref.state_dict())
    spec, noise = torch.randn(3, 32, 64), torch.rand(3, cfg.num_patches)
    lr, pr, mr = ref(spec, noise=noise)
    lf, pf, mf = fast(spec, noise=noise)
    l64, p64, _ = copy.deepcopy(ref).double()(spec.double(), noise=noise)
    assert torch.equal(mr, mf)
    assert_within(lf, lr, l64, terms=TERMS, name="loss")
    assert_within(pf, pr, p64, terms=TERMS, name="pred")


def test_other_lengths_and_bad_inputs():
    cfg = small_config()
    m = Model(cfg)
    for t in (16, 40, 200):  # shorter (crop) and longer (interpolated positional table) than frames=64
        loss, pred, mask = m(torch.randn(2, 32, t))
        assert pred.shape[1] == 2 * (t // 16) and torch.isfinite(loss)
    with pytest.raises(ValueError, match="shorter than one patch"):
        m(torch.randn(2, 32, 15))
    with pytest.raises(ValueError, match="mel bins"):
        m(torch.randn(2, 64, 64))
    with pytest.raises(ValueError, match="expected a spectrogram"):
        m(torch.randn(32, 64))
    with pytest.raises(ValueError, match="noise"):
        m(torch.randn(2, 32, 64), noise=torch.rand(2, 3))
    clf = Classifier(cfg, 3)
    assert clf(torch.randn(2, 32, 100)).shape == (2, 3)
    with pytest.raises(ValueError, match="mel bins"):
        clf(torch.randn(2, 31, 100))


def test_save_load_roundtrip_bit_exact(tmp_path):
    cfg = small_config()
    m = Model(cfg)
    m.save_pretrained(tmp_path / "m")
    m2 = Model.from_pretrained(tmp_path / "m")
    assert m2.config == cfg
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    spec, noise = torch.randn(2, 32, 64), torch.rand(2, cfg.num_patches)
    assert torch.equal(m(spec, noise=noise)[0], m2(spec, noise=noise)[0])
    with pytest.raises(FileNotFoundError, match="config.json"):
        Model.from_pretrained(tmp_path / "nothing")


def test_classifier_from_pretrained_model(tmp_path):
    cfg = small_config()
    m = Model(cfg)
    m.save_pretrained(tmp_path / "pt")
    clf = Classifier.from_pretrained(tmp_path / "pt", num_classes=4, frames=80)
    assert torch.equal(clf.blocks[0].attn.qkv.weight, m.blocks[0].attn.qkv.weight)
    assert torch.equal(clf.patch_embed.proj.weight, m.patch_embed.proj.weight)
    assert clf.pos_embed.shape == (1, 1 + 2 * 5, 32)  # 80 frames -> 5 time patches, table fitted
    with pytest.raises(ValueError, match="num_classes"):
        Classifier.from_pretrained(tmp_path / "pt")
    clf.eval()
    x = torch.randn(2, 32, 80)
    assert clf.embed(x).shape == (2, 32)
    clf.save_pretrained(tmp_path / "clf")
    clf2 = Classifier.from_pretrained(tmp_path / "clf").eval()
    assert torch.equal(clf(x), clf2(x))
    with pytest.raises(ValueError, match="not a pre-training Model"):
        Model.from_pretrained(tmp_path / "clf")
    clf3 = Classifier.from_model(m, 7)
    assert torch.equal(clf3.blocks[1].mlp.fc2.weight, m.blocks[1].mlp.fc2.weight) and clf3.head.out_features == 7


def test_classifier_patchout_only_in_training():
    cfg = small_config()
    clf = Classifier(cfg, 3, patchout=4)
    x = torch.randn(2, 32, 64)
    clf.train()
    assert clf.forward_features(x).shape[1] == 1 + cfg.num_patches - 4
    clf.eval()
    assert clf.forward_features(x).shape[1] == 1 + cfg.num_patches


def test_fused_switch_from_env(monkeypatch):
    monkeypatch.setenv("MASKSPEC_FUSED", "1")
    assert Model(small_config()).fused
    monkeypatch.setenv("MASKSPEC_FUSED", "0")
    assert not Model(small_config()).fused
    assert Model(small_config(), fused=True).fused


def test_multi_mask_equals_repeated_clips():
    """M masks per clip = the same clip repeated M times with those masks (patch embedding shared)."""
    cfg = small_config()
    m = Model(cfg)
    spec = torch.randn(2, 32, 64)
    noise = torch.rand(6, cfg.num_patches)
    loss, pred, mask = m(spec, noise=noise, masks_per_clip=3)
    assert pred.shape == (6, cfg.num_patches, 256) and mask.shape == (6, cfg.num_patches)
    rep = spec.repeat_interleave(3, dim=0)
    loss_r, pred_r, mask_r = m(rep, noise=noise)
    loss64, pred64, _ = copy.deepcopy(m).double()(rep.double(), noise=noise)
    assert torch.equal(mask, mask_r)
    assert_within(pred, pred_r, pred64, terms=TERMS, name="pred")
    assert_within(loss, loss_r, loss64, terms=TERMS, name="loss")
    fast = Model(cfg, fused=True)
    fast.load_state_dict(m.state_dict())
    assert_within(fast(spec, noise=noise, masks_per_clip=3)[0], loss_r, loss64, terms=TERMS, name="fused loss")


def test_variable_length_batch_equals_one_by_one():
    cfg = small_config(frames=128)
    clf = Classifier(cfg, 3).eval()
    lengths = torch.tensor([128, 70, 33])
    clips = [torch.randn(32, int(n)) for n in lengths]
    batch = torch.zeros(3, 32, 128)
    for i, c in enumerate(clips):
        batch[i, :, : c.shape[-1]] = c
    together = clf.embed(batch, lengths)
    gold = copy.deepcopy(clf).double()
    for i, c in enumerate(clips):
        alone = clf.embed(c.unsqueeze(0))
        assert_within(together[i], alone[0], gold.embed(c.unsqueeze(0).double())[0], terms=TERMS, name=f"clip {i}")
    # padding content is ignored: the same numbers, whatever the padding holds
    batch[1, :, 80:] = 1e3
    assert torch.equal(clf.embed(batch, lengths), together)
    assert clf(batch, lengths).shape == (3, 3)


def test_sliding_window_embeddings_cover_long_audio():
    cfg = small_config(frames=64)
    clf = Classifier(cfg, 3).eval()
    long = torch.randn(2, 32, 200)  # 192 frames in whole patches
    emb, starts = clf.embed_windows(long)
    assert emb.shape[:2] == (2, len(starts)) and starts[-1] == 192 - 64 and starts[0] == 0
    assert torch.equal(emb[:, 1], clf.embed(long[..., 32:96]))  # the same call on the same window: exact
    short_emb, _ = clf.embed_windows(torch.randn(2, 32, 50))
    assert short_emb.shape == (2, 1, 32)


def test_each_model_reports_only_the_ops_it_runs():
    import inspect

    from maskspec_fast import fused as op_table

    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_depth=1,
                      decoder_num_heads=2)
    for fused in (False, True):
        assert set(Model(cfg, fused=fused).describe()) == set(op_table.PRETRAIN_OPS)
        clf_ops = set(Classifier(cfg, 3, fused=fused).describe())
        assert clf_ops == set(op_table.CLASSIFIER_OPS) and "masked_mse" not in clf_ops and "unshuffle" not in clf_ops
    # one forward for both paths: the choice lives in the op table, not in the method bodies
    for method in (Model.forward, Model.forward_encoder, Model.forward_decoder, Model.forward_loss):
        assert "self.fused" not in inspect.getsource(method)
