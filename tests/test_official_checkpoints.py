"""Training checkpoints written the way the MAE-family scripts write them (util/misc.py save_model) load safely.

The ``args`` Namespaces come from parsers with the official scripts' flag types and defaults (MaskSpec
trainer/main_pretrain.py + main_finetune.py, AudioMAE main_pretrain.py), then are mutated as the scripts do
(``args.lr = blr * eff_batch / 256``, ``init_distributed_mode``'s rank/gpu/distributed/dist_backend)."""
import argparse
import copy
import datetime
import subprocess
import sys
import warnings

import pytest
import torch
from tolerance import assert_within

from maskspec_fast import Classifier, Model, ModelConfig
from maskspec_fast.interop import SAFE_GLOBALS, read_mae_checkpoint

TERMS = 64  # floor of the rule: an fp32 dot product of the models' width rounds ~64 times


def tiny(**kw):
    return ModelConfig.from_preset("tiny", **{"depth": 2, "decoder_depth": 1, "frames": 256, **kw})


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch_size", default=64, type=int)
    p.add_argument("--epochs", default=400, type=int)
    p.add_argument("--accum_iter", default=1, type=int)
    p.add_argument("--model", default="mae_vit_base_patch16", type=str)
    p.add_argument("--input_size", default=224, type=int)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--blr", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=0.0)
    p.add_argument("--warmup_epochs", type=int, default=40)
    p.add_argument("--output_dir", default="./output_dir_pretrain")
    p.add_argument("--log_dir", default="./output_dir_pretrain")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", default=42, type=int)
    p.add_argument("--resume", default="")
    p.add_argument("--start_epoch", default=0, type=int)
    p.add_argument("--num_workers", default=16, type=int)
    p.add_argument("--pin_mem", action="store_true")
    p.add_argument("--no_pin_mem", action="store_false", dest="pin_mem")
    p.set_defaults(pin_mem=True)
    p.add_argument("--world_size", default=1, type=int)
    p.add_argument("--local_rank", default=-1, type=int)
    p.add_argument("--dist_on_itp", action="store_true")
    p.add_argument("--dist_url", default="env://")


def _as_the_script_leaves_it(args: argparse.Namespace, distributed: bool) -> argparse.Namespace:
    if distributed:  # misc.init_distributed_mode under torchrun
        args.rank, args.world_size, args.gpu = 0, 8, 0
        args.distributed, args.dist_backend = True, "nccl"
    else:
        args.distributed = False
    args.lr = args.blr * args.batch_size * args.accum_iter * args.world_size / 256
    return args


def maskspec_pretrain_args(norm_pix_loss: bool, distributed: bool = False) -> argparse.Namespace:
    p = argparse.ArgumentParser("MaskSpec pre-training")
    _common_flags(p)
    p.add_argument("--model_type", default="vit", type=str)
    p.add_argument("--mask_ratio", default=0.8, type=float)
    p.add_argument("--norm_pix_loss", action="store_true")
    p.add_argument("--balanced_train_hdf5", default="/data/balanced_train_segments_mp3.hdf", type=str)
    p.add_argument("--norm_file", default="./audioset/mean_std_128.npy", type=str)
    p.add_argument("--sample_rate", default=32000, type=int)
    p.add_argument("--clip_length", default=10, type=int)
    p.add_argument("--augment", default=False, type=bool)
    p.add_argument("--epoch_len", default=100000, type=int)
    argv = ["--model", "mae_vit_tiny_patch16", "--mask_ratio", "0.75"] + (["--norm_pix_loss"] if norm_pix_loss else [])
    return _as_the_script_leaves_it(p.parse_args(argv), distributed)


def maskspec_finetune_args() -> argparse.Namespace:
    p = argparse.ArgumentParser("MaskSpec fine-tuning")
    _common_flags(p)
    p.add_argument("--drop_path", type=float, default=0.1)
    p.add_argument("--clip_grad", type=float, default=None)
    p.add_argument("--layer_decay", type=float, default=0.75)
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--finetune", default="")
    p.add_argument("--global_pool", action="store_true")
    p.set_defaults(global_pool=True)
    p.add_argument("--nb_classes", default=527, type=int)
    p.add_argument("--u_patchout", default=200, type=int)
    p.add_argument("--eval", action="store_true")
    p.add_argument("--dist_eval", action="store_true", default=False)
    return _as_the_script_leaves_it(p.parse_args(["--nb_classes", "5", "--finetune", "checkpoint-399.pth"]), True)


def audiomae_pretrain_args(decoder_mode: int) -> argparse.Namespace:
    p = argparse.ArgumentParser("AudioMAE pre-training")
    _common_flags(p)
    p.add_argument("--mask_ratio", default=0.8, type=float)
    p.add_argument("--norm_pix_loss", type=bool, default=False)
    p.add_argument("--audio_exp", type=bool, default=True)
    p.add_argument("--dataset", type=str, default="audioset", choices=["audioset", "esc50", "speechcommands"])
    p.add_argument("--use_custom_patch", type=bool, default=False)
    p.add_argument("--decoder_mode", default=1, type=int)
    p.add_argument("--mask_t_prob", default=0.7, type=float)
    p.add_argument("--mask_f_prob", default=0.3, type=float)
    p.add_argument("--mask_2d", type=bool, default=False)
    return _as_the_script_leaves_it(p.parse_args(["--decoder_mode", str(decoder_mode)]), False)


def train_one_step(model, inputs, loss_fn, lr_scale: bool = False):
    """AdamW (betas 0.9/0.95, no decay on biases/norms, as the scripts build it) + a GradScaler step."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 0.05}]
    if lr_scale:  # main_finetune's param_groups_lrd adds lr_scale to each group
        for g, s in zip(groups, (0.75, 1.0)):
            g["lr_scale"] = s
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(loss_fn(model, inputs)).backward()
    scaler.step(opt)
    scaler.update()
    return opt, scaler


def save_like_misc_save_model(path, model, opt, scaler, epoch, args, ddp_prefix=False):
    sd = model.state_dict()
    if ddp_prefix:
        sd = {f"module.{k}": v for k, v in sd.items()}
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": epoch, "scaler": scaler.state_dict(),
                "args": args}, path)


@pytest.mark.parametrize("norm_pix_loss,distributed", [(True, False), (False, True)])
def test_official_pretrain_checkpoint_loads_and_reproduces(tmp_path, norm_pix_loss, distributed):
    m = Model(tiny(norm_pix_loss=norm_pix_loss))
    x = torch.randn(2, 128, 256)
    opt, scaler = train_one_step(m, x, lambda mod, inp: mod(inp)[0])
    path = tmp_path / "checkpoint-399.pth"
    save_like_misc_save_model(path, m, opt, scaler, 399, maskspec_pretrain_args(norm_pix_loss, distributed))
    with pytest.raises(Exception, match="Namespace"):  # what made the issue: plain weights_only refuses it
        torch.load(path, weights_only=True)

    m2 = Model.from_mae_checkpoint(path)
    assert m2.config.norm_pix_loss is norm_pix_loss and m2.source["epoch"] == 399
    x, noise = torch.randn(3, 128, 256), torch.rand(3, 128)
    out1, out2 = m(x, noise=noise), m2(x, noise=noise)
    for a, b in zip(out1, out2):
        assert torch.equal(a, b)
    ck = read_mae_checkpoint(path)
    assert ck.args["lr"] == pytest.approx(1e-3 * 64 / 256 * (8 if distributed else 1)) and ck.producer == "maskspec"
    assert ck.extras["scaler"]["scale"] == scaler.get_scale()
    assert len(ck.extras["optimizer"]["state"]) == sum(1 for p in m.parameters() if p.requires_grad)


def test_official_finetune_checkpoint_with_ddp_prefix(tmp_path):
    clf = Classifier(tiny(), num_classes=5)
    x, y = torch.randn(2, 128, 256), torch.tensor([1, 3])
    opt, scaler = train_one_step(clf, x, lambda mod, inp: torch.nn.functional.cross_entropy(mod(inp), y), lr_scale=True)
    path = tmp_path / "checkpoint-best.pth"
    save_like_misc_save_model(path, clf, opt, scaler, 79, maskspec_finetune_args(), ddp_prefix=True)
    clf2 = Classifier.from_mae_checkpoint(path)
    assert clf2.num_classes == 5
    clf.eval(), clf2.eval()
    x = torch.randn(3, 128, 200)
    assert torch.equal(clf(x), clf2(x))
    enc = Classifier.from_mae_checkpoint(path, num_classes=7)  # other head: encoder only
    assert torch.equal(enc.blocks[1].mlp.fc2.weight, clf.blocks[1].mlp.fc2.weight) and enc.head.out_features == 7


def test_cls_token_pooled_vit_loads_encoder_only_and_says_so(tmp_path):
    clf = Classifier(tiny(), num_classes=5)
    sd = {k: v for k, v in clf.state_dict().items() if not k.startswith("fc_norm.")}
    sd["norm.weight"], sd["norm.bias"] = torch.ones(192), torch.zeros(192)  # timm ViT with global_pool=False
    torch.save({"model": sd, "args": maskspec_finetune_args()}, tmp_path / "cls.pth")
    with pytest.warns(UserWarning, match="CLS-token pooling"):
        clf2 = Classifier.from_mae_checkpoint(tmp_path / "cls.pth")
    assert torch.equal(clf2.blocks[0].attn.qkv.weight, clf.blocks[0].attn.qkv.weight)


def test_allowlist_is_minimal():
    names = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    assert "argparse.Namespace" in names
    assert all(n.startswith(("argparse.", "pathlib.", "numpy")) for n in names), names


def test_numpy_scalars_and_paths_in_args_are_allowed(tmp_path):
    import pathlib

    import numpy as np

    m = Model(tiny())
    args = maskspec_pretrain_args(True)
    args.output_dir, args.lr = pathlib.Path("/ckpt/run1"), np.float64(2.5e-4)
    path = tmp_path / "ck.pth"
    torch.save({"model": m.state_dict(), "epoch": 3, "args": args}, path)
    ck = read_mae_checkpoint(path)
    assert ck.args["lr"] == 2.5e-4 and str(ck.args["output_dir"]) == "/ckpt/run1"


def test_other_global_is_refused_with_its_type_and_the_fix(tmp_path):
    m = Model(tiny())
    args = maskspec_pretrain_args(True)
    args.started = datetime.datetime(2024, 1, 2)  # harmless in itself, but not on the allowlist
    path = tmp_path / "ck.pth"
    torch.save({"model": m.state_dict(), "args": args}, path)
    with pytest.raises(ValueError, match=r"datetime\.datetime.*maskspec_fast\.convert"):
        Model.from_mae_checkpoint(path)


def test_convert_cli_resaves_a_trusted_file(tmp_path):
    m = Model(tiny())
    args = maskspec_pretrain_args(True)
    args.started = datetime.datetime(2024, 1, 2)
    path = tmp_path / "ck.pth"
    torch.save({"model": m.state_dict(), "args": args}, path)
    cmd = [sys.executable, "-m", "maskspec_fast.convert", str(path), str(tmp_path / "out")]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "datetime.datetime" in refused.stderr
    done = subprocess.run(cmd + ["--trust"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    m2 = Model.from_pretrained(tmp_path / "out")
    x, noise = torch.randn(1, 128, 256), torch.rand(1, 128)
    assert torch.equal(m(x, noise=noise)[0], m2(x, noise=noise)[0])
    assert subprocess.run(cmd[:3] + ["--help"], capture_output=True).returncode == 0


def test_save_mae_checkpoint_loads_strict_in_mae_style_code(tmp_path):
    for model in (Model(tiny()), Classifier(tiny(), num_classes=3)):
        path = model.save_mae_checkpoint(tmp_path / "out.pth")
        obj = torch.load(path, map_location="cpu", weights_only=True)  # what MAE's misc.load_model does
        assert set(obj) == {"model"}
        fresh = type(model)(model.config, **({"num_classes": 3} if isinstance(model, Classifier) else {}))
        fresh.load_state_dict(obj["model"], strict=True)
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in model.state_dict().items())


def test_image_mae_is_refused(tmp_path):
    sd = {"patch_embed.proj.weight": torch.randn(192, 3, 16, 16), "blocks.0.norm1.weight": torch.ones(192)}
    torch.save({"model": sd}, tmp_path / "mae_pretrain_vit_base.pth")
    with pytest.raises(ValueError, match="image MAE"):
        Model.from_mae_checkpoint(tmp_path / "mae_pretrain_vit_base.pth")


# --- AudioMAE: time is the image height. The reference is our own model run in AudioMAE's orientation: ----------
# a config with n_mels := frames (height = time) and frames := mel bins, whose state dict is then exactly an
# AudioMAE (decoder_mode=0) state dict, patch order (time, freq) and values within a patch (time, freq).
T_FRAMES, MELS = 256, 128


def _audiomae_reference(kind):
    cfg = tiny(n_mels=T_FRAMES, frames=MELS)
    return Model(cfg) if kind == "pretrain" else Classifier(cfg, num_classes=4)


def _to_ours(noise_or_tokens, gt, gf):
    """(B, T*F, ...) in (time, freq) order -> (freq, time) order."""
    b, rest = noise_or_tokens.shape[0], noise_or_tokens.shape[2:]
    return noise_or_tokens.reshape(b, gt, gf, *rest).transpose(1, 2).reshape(b, gt * gf, *rest)


def test_audiomae_pretrain_checkpoint_is_transposed_exactly(tmp_path):
    ref = _audiomae_reference("pretrain")
    path = tmp_path / "audiomae_pretrained.pth"
    torch.save({"model": ref.state_dict(), "epoch": 32, "args": audiomae_pretrain_args(decoder_mode=0)}, path)
    with pytest.warns(UserWarning, match="AudioMAE.*Kaldi fbank"):
        ours = Model.from_mae_checkpoint(path)
    assert ours.config.grid_size == (8, 16) and ours.source["producer"] == "audiomae"
    assert ours.config.norm_pix_loss is False and ours.config.mask_ratio == 0.8  # from its args
    ref.config.norm_pix_loss, ref.config.mask_ratio = False, 0.8
    gt, gf, p = T_FRAMES // 16, MELS // 16, 16
    spec = torch.randn(2, MELS, T_FRAMES)  # ours: (B, F, T)
    noise = torch.rand(2, gt * gf)  # AudioMAE's token order
    loss_r, pred_r, mask_r = ref(spec.transpose(1, 2).contiguous(), noise=noise)
    loss_64, pred_64, _ = copy.deepcopy(ref).double()(spec.transpose(1, 2).contiguous().double(), noise=noise)
    loss_o, pred_o, mask_o = ours(spec, noise=_to_ours(noise, gt, gf))
    assert torch.equal(mask_o, _to_ours(mask_r, gt, gf))
    assert_within(loss_o, loss_r, loss_64, terms=TERMS, name="loss")

    def ours_order(pred):
        return _to_ours(pred, gt, gf).reshape(2, gt * gf, p, p).transpose(-1, -2).reshape(2, gt * gf, p * p)

    assert_within(pred_o, ours_order(pred_r), ours_order(pred_64), terms=TERMS, name="pred")


def test_audiomae_finetuned_classifier_and_explicit_producer(tmp_path):
    ref = _audiomae_reference("classifier").eval()
    torch.nn.init.normal_(ref.head.weight)  # a non-trivial head
    for name, payload in (("with_args.pth", {"model": ref.state_dict(), "args": audiomae_pretrain_args(0)}),
                          ("bare.pth", ref.state_dict())):
        torch.save(payload, tmp_path / name)
    spec = torch.randn(3, MELS, T_FRAMES)
    with pytest.warns(UserWarning, match="AudioMAE"):
        ours = Classifier.from_mae_checkpoint(tmp_path / "with_args.pth").eval()
    spec_t = spec.transpose(1, 2).contiguous()
    assert_within(ours(spec), ref(spec_t), copy.deepcopy(ref).double()(spec_t.double()), terms=TERMS, name="logits")
    # a bare state dict cannot tell a 16 x 8 grid from an 8 x 16 one: the caller says who wrote it
    with pytest.warns(UserWarning, match="AudioMAE"):
        bare = Classifier.from_mae_checkpoint(tmp_path / "bare.pth", producer="audiomae").eval()
    assert torch.equal(bare(spec), ours(spec))


def test_audiomae_swin_decoder_is_refused_for_pretraining_but_encoder_loads(tmp_path):
    ref = _audiomae_reference("pretrain")
    sd = dict(ref.state_dict())
    sd["decoder_blocks.0.attn.relative_position_bias_table"] = torch.zeros(225, 16)
    path = tmp_path / "audiomae_swin.pth"
    torch.save({"model": sd, "args": audiomae_pretrain_args(decoder_mode=1)}, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="Swin"):
            Model.from_mae_checkpoint(path)
        clf = Classifier.from_mae_checkpoint(path, num_classes=2)
    assert torch.equal(clf.patch_embed.proj.weight, ref.patch_embed.proj.weight.transpose(-1, -2))


def test_audiomae_overlapping_patches_are_refused(tmp_path):
    ref = _audiomae_reference("pretrain")
    args = audiomae_pretrain_args(0)
    args.use_custom_patch = True
    torch.save({"model": ref.state_dict(), "args": args}, tmp_path / "ck.pth")
    with pytest.raises(ValueError, match="overlapping"):
        Model.from_mae_checkpoint(tmp_path / "ck.pth")
