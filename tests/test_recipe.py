"""The fine-tuning recipe (maskspec_fast.train.recipe): epochs -> steps, the validation split, checkpoint selection."""
import pytest
import torch

from maskspec_fast.train import recipe as R


@pytest.mark.parametrize("n,batch,epochs", [(480, 32, 40.0), (88, 32, 40.0), (1600, 64, 10.0), (7, 4, 1.0)])
def test_steps_scale_with_the_set(n, batch, epochs):
    r = R.FinetuneRecipe(epochs=epochs, batch_size=batch, val_fraction=0.15)
    s = R.resolve(r, n, num_classes=3)
    assert s.fit_clips + s.val_clips == n and s.val_clips >= 1
    assert s.steps_per_epoch == -(-s.fit_clips // batch)
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


def test_split_view_restricts_items_and_forwards_attributes():
    class Files(torch.utils.data.Dataset):
        num_classes, clip_seconds = 2, 1.0
        items = [(f"f{i}.wav", i % 2) for i in range(10)]

        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"label": torch.tensor(i % 2)}

        def _label(self, i):
            return i % 2

    fit, val = R.train_val_split(Files(), R.FinetuneRecipe(val_fraction=0.2), seed=3)
    assert len(fit) == 8 and len(val) == 2
    assert sorted(fit.items + val.items) == sorted(Files.items)
    assert fit.num_classes == 2 and fit.clip_seconds == 1.0
    assert sorted(int(val[i]["label"]) for i in range(2)) == [0, 1]  # stratified: one clip of each class
    plain = R.SplitView([1, 2, 3], torch.tensor([0, 2]))
    assert not hasattr(plain, "items") and [plain[0], plain[1]] == [1, 3]
