"""SpecAugment, mixup, level/tilt of the fine-tuning recipe (maskspec_fast.train.augment) and their use in FinetuneTask."""
import pytest
import torch
import torch.nn.functional as F
from precise import log_mel64
from tolerance import C, allowed, assert_dtype_bound, assert_within, max_error

from maskspec_fast import Classifier, ModelConfig
from maskspec_fast.frontend.logmel import LogMel
from maskspec_fast.train.augment import (
    apply_gain,
    apply_mixup,
    apply_spec_augment,
    apply_time_roll,
    draw_gain,
    draw_mixup_lambda,
    draw_spec_augment,
    draw_time_roll,
    scaled_time_mask,
    soft_targets,
    spec_augment_reference,
)
from maskspec_fast.train.distributed import local_rows
from maskspec_fast.train.tasks import FinetuneTask, classification_loss


def _gen(seed=None):
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())) if seed is None else seed)


@pytest.mark.parametrize("b, f, t, max_f, max_t", [(5, 128, 37, 48, 7), (1, 16, 3, 48, 192), (3, 128, 1000, 48, 192)])
def test_vectorized_masks_equal_the_loop_reference(b, f, t, max_f, max_t):
    spec = torch.randn(b, f, t)
    p = draw_spec_augment(_gen(), b, f, t, max_f, max_t)
    out = apply_spec_augment(spec, p)
    assert torch.equal(out, spec_augment_reference(spec, p))
    # the input is untouched and unmasked values pass through unchanged
    keep = out != 0
    assert torch.equal(out[keep], spec[keep])


def test_mask_widths_and_starts_are_in_range_and_cover_it():
    n, f, t, max_f, max_t = 4000, 128, 100, 48, 30
    p = draw_spec_augment(_gen(), n, f, t, max_f, max_t)
    assert p.f_width.min() == 0 and p.f_width.max() == max_f  # both ends of U{0..48} are drawn
    assert p.t_width.min() == 0 and p.t_width.max() == max_t
    assert (p.f_start >= 0).all() and (p.f_start + p.f_width <= f).all()
    assert (p.t_start >= 0).all() and (p.t_start + p.t_width <= t).all()
    assert abs(p.f_width.float().mean().item() - max_f / 2) < 1.5  # uniform: mean 24 +- ~0.4 (sd / sqrt n)
    # a mask wider than the axis is capped at the axis
    q = draw_spec_augment(_gen(), 200, 16, 5, 48, 192)
    assert q.f_width.max() <= 16 and q.t_width.max() <= 5


def test_masked_band_is_contiguous_and_zero():
    spec = torch.randn(2, 128, 50) + 5.0  # no zeros by chance
    p = draw_spec_augment(_gen(), 2, 128, 50, 48, 20)
    p.f_width[:] = torch.tensor([10, 0])
    p.t_width[:] = torch.tensor([0, 7])
    # the drawn starts fit the drawn widths; keep the widened spans inside the axes
    p.f_start[0] = p.f_start[0].clamp(max=128 - 10)
    p.t_start[1] = p.t_start[1].clamp(max=50 - 7)
    out = apply_spec_augment(spec, p)
    fs, ts = int(p.f_start[0]), int(p.t_start[1])
    assert (out[0, fs : fs + 10] == 0).all() and (out[0] == 0).sum() == 10 * 50
    assert (out[1, :, ts : ts + 7] == 0).all() and (out[1] == 0).sum() == 128 * 7


def test_time_mask_scales_with_clip_length():
    assert scaled_time_mask(192, 1000) == 192
    assert scaled_time_mask(192, 992) == 190
    assert scaled_time_mask(192, 256) == 49
    assert scaled_time_mask(192, 64) == 12


def test_mixup_lambda_distribution_and_determinism():
    lam = draw_mixup_lambda(_gen(3), 5000, 0.3)
    assert lam.shape == (5000,) and (lam >= 0.5).all() and (lam <= 1.0).all()
    assert torch.equal(lam, draw_mixup_lambda(_gen(3), 5000, 0.3))
    assert not torch.equal(lam, draw_mixup_lambda(_gen(4), 5000, 0.3))
    # Beta(0.3, 0.3) folded at 0.5 puts much mass near 1 (~ half the draws above 0.9)
    assert 0.3 < (lam > 0.9).float().mean().item() < 0.7
    assert torch.equal(draw_mixup_lambda(_gen(), 4, 0.0), torch.ones(4))


def test_mixup_mixes_clips_and_targets_with_the_reversed_batch():
    b, c = 5, 7
    spec = torch.randn(b, 16, 9)
    labels = torch.randint(0, c, (b,))
    lam = draw_mixup_lambda(_gen(), b, 1.0)
    x, y = apply_mixup(spec, soft_targets(labels, c), lam)
    for i in range(b):
        j = b - 1 - i
        l64, s64 = lam[i].double(), spec.double()
        assert_within(x[i], lam[i] * spec[i] + (1 - lam[i]) * spec[j], l64 * s64[i] + (1 - l64) * s64[j], terms=3,
                      name="mixed clip")
        expect, expect64 = torch.zeros(c), torch.zeros(c, dtype=torch.float64)
        for e, w in ((expect, lam[i]), (expect64, l64)):
            e[labels[i]] += w
            e[labels[j]] += 1 - w
        assert_within(y[i], expect, expect64, terms=2, name="mixed target")
    assert_dtype_bound(y.sum(1), torch.ones(b, dtype=torch.float64), terms=c + 1, name="targets sum to 1")
    # multi-hot targets mix the same way (BCE takes soft targets)
    hot = (torch.rand(b, c) > 0.5).float()
    _, y2 = apply_mixup(spec, soft_targets(hot, c), lam)
    l64 = lam[:, None].double()
    assert_within(y2, lam[:, None] * hot + (1 - lam[:, None]) * hot.flip(0),
                  l64 * hot.double() + (1 - l64) * hot.flip(0).double(), terms=3, name="mixed multi-hot")


def test_soft_one_hot_targets_give_the_integer_label_loss():
    logits, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    for s in (0.0, 0.1):
        soft = classification_loss(logits, soft_targets(labels, 5), multilabel=False, smoothing=s)
        hard = F.cross_entropy(logits, labels, label_smoothing=s)
        precise = F.cross_entropy(logits.double(), labels, label_smoothing=s)
        assert_within(soft, hard, precise, terms=5, name=f"soft-target loss, smoothing {s}")  # 5 classes summed


def test_finetune_task_draws_are_independent_of_the_process_split():
    """Rank r of w keeps rows r, r+w, ... of the global draw: the union over ranks is the one-process draw."""
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_num_heads=2,
                      decoder_depth=1)
    task = FinetuneTask(Classifier(cfg, 3), multilabel=False, freq_mask=48, time_mask=192, mixup_alpha=0.3)
    B = 12
    spec = torch.randn(B, 128, 64)
    full = task.draw(_gen(7), B, local_rows(B, 0, 1), spec)
    assert set(full) == {"f_start", "f_width", "t_start", "t_width", "lam"}
    assert full["t_width"].max() <= scaled_time_mask(192, 64)
    for w in (2, 3, 4):
        for r in range(w):
            part = task.draw(_gen(7), B, local_rows(B, r, w), spec[r::w])
            for k in full:
                assert torch.equal(part[k], full[k][r::w]), (w, r, k)


def test_finetune_task_loss_uses_augmentations():
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=64, decoder_embed_dim=32, decoder_num_heads=2,
                      decoder_depth=1)
    clf = Classifier(cfg, 4)
    with torch.no_grad():
        clf.head.weight.normal_()
    spec, labels = torch.randn(4, 128, 64), torch.randint(0, 4, (4,))
    plain = FinetuneTask(clf, multilabel=False)
    aug = FinetuneTask(clf, multilabel=False, freq_mask=48, time_mask=192, mixup_alpha=1.0)
    extras = aug.draw(_gen(), 4, local_rows(4, 0, 1), spec)
    assert plain.draw(_gen(), 4, local_rows(4, 0, 1), spec) == {}
    x, y = aug.augment(spec, labels, **extras)
    assert y.shape == (4, 4) and not torch.equal(x, spec)
    assert torch.isfinite(aug.loss(clf, spec, labels, **extras))
    assert not torch.equal(aug.loss(clf, spec, labels, **extras), plain.loss(clf, spec, labels))


def test_gain_equals_scaling_the_waveform():
    """A level change of g dB on the log-mel is the log-mel of the waveform scaled by 10 ** (g / 20)."""
    torch.manual_seed(torch.seed() % 2**31)
    wave = torch.randn(3, 16000) * torch.rand(3, 1)
    front = LogMel().eval()
    db = torch.empty(3).uniform_(-12, 12)
    base = front(wave)
    got = apply_gain(base, torch.stack([db, torch.zeros(3)], 1))
    precise = log_mel64(front, wave.double() * torch.pow(10.0, db.double() / 20).unsqueeze(1))
    # the tolerance rule, with got's reference being the front end on the unscaled wave: apply_gain multiplies the
    # power by at most 10 ** (max |g| / 10), and near the log floor the input's error is carried in the power domain,
    # so that error may grow by that factor; plus a few roundings of apply_gain itself (exp, subtract, multiply, log)
    amplification = max(1.0, float(torch.pow(10.0, db.abs().max() / 10)))
    bound = allowed(base, log_mel64(front, wave.double()), c=C * amplification, terms=4,
                    scale=float(precise.abs().max()))
    assert max_error(got, precise) <= bound, (max_error(got, precise), bound)


def test_tilt_raises_high_bins_and_lowers_low_ones_by_half_the_span():
    spec = torch.full((1, 128, 5), 0.3)  # well above the log floor: the change is (almost) additive
    out = apply_gain(spec, torch.tensor([[0.0, 10.0]]))
    step = 10.0 / 10 * torch.log(torch.tensor(10.0)) / 5.0  # 10 dB in the front end's units
    torch.testing.assert_close(out[0, -1] - spec[0, -1], torch.full((5,), float(step) / 2), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[0, 0] - spec[0, 0], torch.full((5,), -float(step) / 2), atol=1e-4, rtol=1e-4)


def test_gain_draws_are_bounded_seeded_and_zero_when_off():
    g = draw_gain(_gen(3), 1000, 6.0, 0.0)
    assert g.shape == (1000, 2) and g[:, 0].abs().max() <= 6 and g[:, 0].abs().max() > 5 and not g[:, 1].any()
    assert torch.equal(g, draw_gain(_gen(3), 1000, 6.0, 0.0))


def test_time_roll_is_a_circular_shift_per_clip():
    spec = torch.randn(3, 5, 17)
    g = torch.Generator().manual_seed(1)
    rolled = apply_time_roll(spec, draw_time_roll(g, 3, 17))
    shifts = torch.randint(0, 17, (3,), generator=torch.Generator().manual_seed(1))
    for b in range(3):
        assert torch.equal(rolled[b], torch.roll(spec[b], int(shifts[b]), dims=-1))
