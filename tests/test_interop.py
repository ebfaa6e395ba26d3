"""MAE-style .pth checkpoints (weights-only) and the HEAR API."""
import pickle

import pytest
import torch

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.hear import get_scene_embeddings, get_timestamp_embeddings, load_model


def tiny(**kw):
    return ModelConfig.from_preset("tiny", depth=2, decoder_depth=1, frames=256, **kw)


def test_mae_pth_roundtrip_with_ddp_prefix(tmp_path):
    m = Model(tiny())
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": {f"module.{k}": v for k, v in m.state_dict().items()}, "epoch": 399}, path)
    m2 = Model.from_mae_checkpoint(path)
    assert m2.config.embed_dim == 192 and m2.config.num_heads == 3 and m2.config.decoder_num_heads == 16
    x, noise = torch.randn(2, 128, 256), torch.rand(2, 128)
    assert torch.equal(m(x, noise=noise)[0], m2(x, noise=noise)[0])
    clf = Classifier.from_mae_checkpoint(path, num_classes=4)
    assert torch.equal(clf.blocks[1].attn.qkv.weight, m.blocks[1].attn.qkv.weight)


def test_mae_pth_other_grid_is_interpolated(tmp_path):
    m = Model(tiny())  # 16 time patches
    path = tmp_path / "ck.pth"
    torch.save({"model": m.state_dict()}, path)
    clf = Classifier.from_mae_checkpoint(path, num_classes=3, frames=512)  # 32 time patches
    assert clf.pos_embed.shape == (1, 1 + 8 * 32, 192)


def test_pth_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(ValueError, match=r"weights-only.*builtins\.print.*maskspec_fast\.convert"):
        Model.from_mae_checkpoint(path)


def test_hear_api_shapes_on_variable_length(tmp_path):
    m = Model(tiny())
    m.save_pretrained(tmp_path / "pt")
    model = load_model(str(tmp_path / "pt"))
    assert model.sample_rate == 48000 and model.scene_embedding_size == 192 and model.hop_frames == 4
    for n in (6000, 48000, 300000):  # shorter than a patch, 1 s, longer than the 256-frame window
        audio = torch.randn(3, n) * 0.1
        scene = get_scene_embeddings(audio, model)
        assert scene.shape == (3, 192) and torch.isfinite(scene).all()
        emb, ts = get_timestamp_embeddings(audio, model)
        assert emb.shape[0] == 3 and emb.shape[2] == model.timestamp_embedding_size and ts.shape == emb.shape[:2]
        assert torch.isfinite(emb).all()
        n32 = -(-n * 2 // 3)  # 48 -> 32 kHz
        frames = 1 + (max(n32, 16 * 320 + 1) - 1) // 320
        assert emb.shape[1] == (frames - 16) // 4 + 1
        assert torch.allclose(ts[:, 1:] - ts[:, :-1], torch.tensor(40.0)) and ts[0, 0] == 80.0
