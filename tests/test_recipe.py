"""The fine-tuning recipe (maskspec_fast.train.recipe): epochs -> steps, the validation split, checkpoint selection."""
import pytest
import torch

from maskspec_fast.train import recipe as R


@pytest.mark.parametrize("n,batch,epochs", [(480, 32, 40.0), (88, 32, 40.0), (1600, 64, 10.0), (7, 4, 1.0)])
def test_steps_scale_with_the_set(n, batch, epochs):
    r = R.FinetuneRecipe(epochs=epochs, batch_size=batch, val_fraction=0.15)
    s = R.resolve(r, n)
    assert s.fit_clips + s.val_clips == n and s.val_clips >= 1
    assert s.steps_per_epoch == max(1, s.fit_clips // batch)  # full batches, as the trainer runs them
    assert s.steps == max(1, round(epochs * s.steps_per_epoch))
    assert 0 <= s.warmup_steps < max(2, s.steps)
    assert 1 <= s.eval_every <= s.steps or s.steps == 1


def test_no_validation_split():
    s = R.resolve(R.FinetuneRecipe(val_fraction=0.0), 100)
    assert (s.fit_clips, s.val_clips, s.eval_every) == (100, 0, 0)


def test_stratified_split_is_disjoint_and_balanced():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    labels = torch.arange(5).repeat_interleave(torch.tensor([30, 30, 20, 10, 7]))  # 97 clips, unbalanced
    fit, val = R.stratified_split(labels, 15, g)
    assert fit.numel() + val.numel() == 97
    assert not set(fit.tolist()) & set(val.tolist())
    counts = torch.bincount(labels[val], minlength=5)
    expected = torch.tensor([30, 30, 20, 10, 7]) * 15 / 97
    assert counts.sum() == 15 and ((counts - expected).abs() < 1).all()


def test_best_tracker_prefers_accuracy_then_loss_and_stops():
    t = R.BestTracker(patience=2)
    assert t.update(10, 0.5, 1.0)
    assert not t.update(20, 0.4, 0.1)  # lower accuracy loses even with a lower loss
    assert t.update(30, 0.5, 0.9)  # tie on accuracy: lower loss wins
    assert t.best_step == 30 and not t.should_stop
    assert not t.update(40, 0.5, 0.95)
    assert not t.update(50, 0.45, 0.5)
    assert t.should_stop
    assert not R.BestTracker(patience=0).should_stop


def test_patchout_tokens_leave_one():
    assert R.patchout_tokens(R.FinetuneRecipe(patchout_fraction=0.4), 248) == 99
    assert R.patchout_tokens(R.FinetuneRecipe(patchout_fraction=1.0), 10) == 9


def test_split_subsets_are_sources_of_their_own():
    from maskspec_fast.data import FileDataset

    files = [(f"f{i}.wav", i % 2) for i in range(10)]
    ds = FileDataset(files, clip_seconds=1.0)
    ds.class_names = ["a", "b"]
    fit, val = R.train_val_split(ds, R.FinetuneRecipe(val_fraction=0.2), seed=3)
    assert len(fit) == 8 and len(val) == 2
    assert sorted(fit.files() + val.files()) == sorted(files)
    assert fit.num_classes == 2 and fit.clip_seconds == 1.0
    assert sorted(val.labels().tolist()) == [0, 1]  # stratified: one clip of each class
    assert fit.sample_weights().shape == (8,)  # the split's own weights, not the parent's (10,)
    assert not hasattr(fit, "__getattr__")  # nothing forwarded to the parent by attribute lookup


@pytest.mark.parametrize("n,fraction,classes", [(45, 0.15, 20), (600, 0.15, 15), (10, 0.5, 2), (3, 0.1, 3)])
def test_validation_split_stays_near_the_asked_fraction(n, fraction, classes):
    """Outside report: 22 of 45 clips were held out at 0.15 on a many-class set (a one-per-class floor)."""
    fit, val = R.split_sizes(n, fraction)
    assert fit + val == n and val == min(max(round(n * fraction), 1), n - 1)
    labels = torch.arange(n) % classes
    f_idx, v_idx = R.stratified_split(labels, val, torch.Generator().manual_seed(0))
    assert v_idx.numel() == val and f_idx.numel() == fit
