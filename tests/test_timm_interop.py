"""Our Classifier is timm's VisionTransformer (mean pooling, fc_norm): its weights load both ways with strict=True
and give the same logits and clip embeddings.

timm is not a dependency (it needs torchvision); this file skips without it. To run it, use an environment that
has timm, e.g. ``python -m venv /tmp/timmvenv && /tmp/timmvenv/bin/pip install torch torchvision timm safetensors
numpy scipy soundfile tqdm matplotlib pytest`` and ``PYTHONPATH=. /tmp/timmvenv/bin/python -m pytest
tests/test_timm_interop.py``.
"""
import copy

import pytest
import torch

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import VisionTransformer  # noqa: E402
from tolerance import assert_within  # noqa: E402

from maskspec_fast import Classifier, ModelConfig  # noqa: E402


def _timm_vit(config: ModelConfig, num_classes: int) -> VisionTransformer:
    return VisionTransformer(
        img_size=(config.n_mels, config.frames),
        patch_size=config.patch_size,
        in_chans=1,
        num_classes=num_classes,
        global_pool="avg",
        fc_norm=True,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
    )


def _randomize(module: torch.nn.Module) -> None:
    """Every parameter random (the fresh head is ~0 and LayerNorms are 1/0: a comparison would prove little)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.05)


# grid_t = 7 (prime) and 4; D = 48 with 3 heads (head dim 16), C = 5 / 1
@pytest.mark.parametrize("frames, embed_dim, heads, num_classes", [(112, 48, 3, 5), (64, 64, 2, 1)])
def test_classifier_and_timm_vit_are_the_same_network(frames, embed_dim, heads, num_classes):
    config = ModelConfig(embed_dim=embed_dim, depth=2, num_heads=heads, frames=frames, decoder_embed_dim=64,
                         decoder_num_heads=2, decoder_depth=1)
    ours = Classifier(config, num_classes)
    _randomize(ours)
    ours.eval()
    vit = _timm_vit(config, num_classes).eval()
    vit.load_state_dict(ours.state_dict(), strict=True)  # ours -> timm

    spec = torch.randn(3, config.n_mels, frames)
    with torch.no_grad():
        logits_ours, logits_timm = ours(spec), vit(spec.unsqueeze(1))
        emb_ours = ours.embed(spec)
        emb_timm = vit.forward_head(vit.forward_features(spec.unsqueeze(1)), pre_logits=True)
        gold = copy.deepcopy(ours).double()
        logits_64, emb_64 = gold(spec.double()), gold.embed(spec.double())
    assert logits_ours.shape == logits_timm.shape == (3, num_classes)
    assert_within(logits_timm, logits_ours, logits_64, terms=embed_dim, name="logits")
    assert_within(emb_timm, emb_ours, emb_64, terms=embed_dim, name="embedding")

    # timm -> ours: a timm-trained network loads strictly into a fresh Classifier and agrees
    _randomize(vit)
    back = Classifier(config, num_classes).eval()
    back.load_state_dict(vit.state_dict(), strict=True)
    with torch.no_grad():
        assert_within(back(spec), vit(spec.unsqueeze(1)), copy.deepcopy(back).double()(spec.double()),
                      terms=embed_dim, name="timm -> ours")


def test_saved_classifier_loads_into_timm(tmp_path):
    from safetensors.torch import load_file

    config = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=48, decoder_embed_dim=32, decoder_num_heads=2,
                         decoder_depth=1)
    clf = Classifier(config, 4)
    _randomize(clf)
    clf.eval().save_pretrained(tmp_path / "clf")
    vit = _timm_vit(config, 4).eval()
    vit.load_state_dict(load_file(str(tmp_path / "clf" / "model.safetensors")), strict=True)
    spec = torch.randn(2, 128, 48)
    with torch.no_grad():
        assert_within(vit(spec.unsqueeze(1)), clf(spec), copy.deepcopy(clf).double()(spec.double()), terms=32,
                      name="saved -> timm")
