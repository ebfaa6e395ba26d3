"""Smoke test of the pre-training evaluation experiment (experiments/ssl_eval.py) with tiny settings, plus its
pieces that can be checked exactly (linear probe, time-roll augmentation)."""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "experiments"
sys.path.insert(0, str(BENCH))
import ssl_eval  # noqa: E402


def test_help_runs():
    out = subprocess.run([sys.executable, str(BENCH / "ssl_eval.py"), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--unlabeled", "--esc50", "--pretrain-steps", "--finetune-epochs", "--depth", "--seed", "--out",
                 "--quick"):
        assert flag in out.stdout


def test_quick_run_writes_results(tmp_path):
    result = ssl_eval.main(["--quick", "--out", str(tmp_path), "--data-dir", str(tmp_path / "data"), "--threads", "2",
                            "--seed", "3"])
    data = json.loads((tmp_path / "ssl_eval.json").read_text())
    assert set(data["accuracy"]) == set(ssl_eval.SETTINGS)
    for s in ssl_eval.SETTINGS:
        folds = data["accuracy"][s]["per_fold"]
        assert list(folds) == ["1", "2"]
        assert all(0.0 <= a <= 1.0 for a in folds.values())
        assert data["accuracy"][s]["mean"] == pytest.approx(sum(folds.values()) / 2)
    assert data["data"]["labeled_clips"] == 2 * len(data["data"]["classes"])
    assert data["environment"]["torch"] == torch.__version__
    curve = data["pretraining"]["curve"]
    assert curve[-1]["step"] == data["settings"]["pretrain_steps"]
    assert curve[-1]["loss"] < curve[0]["loss"]  # even 6 steps lower the masked-patch loss
    assert data["pretraining"]["heldout_loss_pretrained"] < data["pretraining"]["heldout_loss_random_init"]
    n_classes = len(data["data"]["classes"])
    for s in ssl_eval.SETTINGS:  # per-class accuracy and the confusion matrix agree with the per-fold numbers
        cm = torch.tensor(data["accuracy"][s]["confusion"])
        assert cm.shape == (n_classes, n_classes) and int(cm.sum()) == data["data"]["labeled_clips"]
        assert float(cm.diag().sum() / cm.sum()) == pytest.approx(data["accuracy"][s]["mean"], abs=1e-6)
        assert set(data["accuracy"][s]["per_class"]) == set(data["data"]["classes"])
    for name in ("ssl_eval.png", "ssl_eval_reconstructions.png", "ssl_eval_confusion.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert list((tmp_path / "data").glob("*/meta/esc50.csv"))  # the built-in labeled set, ESC-50 layout
    assert result["accuracy"] == data["accuracy"]


def test_linear_probe_separates_gaussian_blobs():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    centers = torch.randn(5, 23, generator=g) * 4
    y = torch.arange(5).repeat(20)
    x = centers[y] + torch.randn(100, 23, generator=g)
    yte = torch.arange(5).repeat(7)
    xte = centers[yte] + torch.randn(35, 23, generator=g)
    pred = ssl_eval.linear_probe(x, y, xte, 5, l2=1e-3, iters=100)
    assert (pred == yte).float().mean() > 0.95
    # chance level on labels unrelated to the features (the probe is not a lookup of the test set)
    shuffled = ssl_eval.linear_probe(x, y[torch.randperm(100, generator=g)], xte, 5, l2=1e-3, iters=100)
    assert (shuffled == yte).float().mean() < 0.8


# ------------------------------------------------------------------------------------------------ independent streams
def _tiny_setup():
    from maskspec_fast import Model, ModelConfig

    cfg = ModelConfig(frames=32, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                      decoder_num_heads=2, preset="custom")
    torch.manual_seed(0)
    models = {"pretrained": Model(cfg), "random": Model(cfg)}
    g = torch.Generator().manual_seed(1)
    folds = {k: (torch.randn(9, 128, 32, generator=g), torch.arange(3).repeat(3)) for k in (1, 2, 3)}
    return models, folds


def _args(*extra):
    return ssl_eval.build_parser().parse_args(["--finetune-batch", "4", "--val-fraction", "0.25", "--probe-iters",
                                               "10", "--eval-every-epochs", "1", "--patience", "0", *extra])


def test_each_setting_and_fold_has_its_own_stream():
    models, folds = _tiny_setup()
    before = {k: v.clone() for k, v in models["pretrained"].state_dict().items()}
    a = ssl_eval.evaluate_folds(models, folds, 3, _args("--finetune-epochs", "2"), ssl_eval.SETTINGS)
    # another length for the pre-trained fine-tuning only, the other settings in another order, one fold fewer
    b = ssl_eval.evaluate_folds(models, folds, 3, _args("--finetune-epochs", "2"),
                                ["logmel_baseline", "probe_random", "finetune_random", "probe_pretrained"],
                                test_folds=[3, 2])
    c = ssl_eval.evaluate_folds(models, folds, 3, _args("--finetune-epochs", "3"), ["finetune_pretrained"],
                                test_folds=[2])
    for s in ("logmel_baseline", "probe_random", "finetune_random", "probe_pretrained"):
        for k in (2, 3):
            assert torch.equal(a["predictions"][s][k], b["predictions"][s][k]), (s, k)
    for k in (2, 3):  # fine-tuning: the same validation curve, value for value
        assert a["reports"]["finetune_random"][k]["history"] == b["reports"]["finetune_random"][k]["history"]
    # the length change did change the setting it was applied to (the test would notice a dead option)
    assert c["reports"]["finetune_pretrained"][2]["steps_run"] > a["reports"]["finetune_pretrained"][2]["steps_run"]
    # the shared models are never modified by fine-tuning
    assert all(torch.equal(v, models["pretrained"].state_dict()[k]) for k, v in before.items())


def test_stream_seeds_differ_per_setting_and_fold():
    seeds = {ssl_eval.stream_seed(0, s, k) for s in ssl_eval.SETTINGS for k in range(1, 6)}
    assert len(seeds) == 5 * len(ssl_eval.SETTINGS)
    assert ssl_eval.stream_seed(0, "finetune_random", 1) == ssl_eval.stream_seed(0, "finetune_random", 1)
    assert ssl_eval.stream_seed(1, "finetune_random", 1) != ssl_eval.stream_seed(0, "finetune_random", 1)


def test_logmel_features_are_per_bin_mean_and_std():
    spec = torch.randn(4, 128, 50) * torch.linspace(0.5, 2, 128).view(1, -1, 1) + 3
    f = ssl_eval.logmel_features(spec)
    assert f.shape == (4, 256)
    assert torch.equal(f[:, :128], spec.mean(-1)) and torch.equal(f[:, 128:], spec.std(-1))  # the same ops: exact


def test_confusion_counts():
    true = torch.tensor([0, 0, 1, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = ssl_eval.confusion(pred, true, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_probe_head_init_reproduces_the_probe():
    """LP-FT: the head set from the probe gives the probe's predictions before any fine-tuning step."""
    from maskspec_fast import Classifier

    models, folds = _tiny_setup()
    x, y = folds[1]
    clf = Classifier.from_model(models["pretrained"], 3)
    emb = ssl_eval.embed(clf, x)
    probe = ssl_eval.linear_probe(emb, y, emb, 3, 1e-3, 30)
    args = _args("--finetune-epochs", "0", "--val-fraction", "0")
    rec = ssl_eval.recipe_from_args(args).replace(epochs=1e-9)  # resolve() keeps one step; lr 0 below
    rec = rec.replace(lr=0.0, min_lr=0.0)
    ssl_eval.finetune(clf, x, y, rec, seed=5, num_classes=3)
    assert torch.equal(ssl_eval.logits_of(clf, x).argmax(-1), probe)


def test_parallel_folds_give_the_same_numbers():
    models, folds = _tiny_setup()
    args = _args("--finetune-epochs", "1")
    settings = ["finetune_pretrained", "probe_random", "logmel_baseline"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = ssl_eval.evaluate_folds(models, folds, 3, args, settings, [1, 2])
    finally:
        torch.set_num_threads(threads)
    two = ssl_eval.evaluate_folds_parallel(models, folds, 3, args, settings, [1, 2], workers=2)
    for s in settings:
        for k in (1, 2):
            assert torch.equal(one["predictions"][s][k], two["predictions"][s][k]), (s, k)
    assert one["reports"]["finetune_pretrained"][2]["history"] == two["reports"]["finetune_pretrained"][2]["history"]


def test_pretraining_windows_cut_clips_and_drop_silent_ones():
    from maskspec_fast.frontend.logmel import LogMel

    wave = torch.zeros(3, 32000 * 2)  # 2-s files of which file 1 is silent and file 2 has sound in its 1st second
    wave[0] = torch.randn(64000) * 0.1
    wave[2, :32000] = torch.randn(32000) * 0.1
    specs = LogMel()(wave)[..., :192]  # (3, 128, 192)
    win, dropped = ssl_eval.pretraining_windows(specs, 64)  # 3 windows per file
    assert dropped == 3 + 1  # all of file 1, the last window of file 2 (its 2nd one touches the sound's tail)
    assert win.shape == (9 - dropped, 128, 64)
    torch.testing.assert_close(win[:3], specs[0].reshape(128, 3, 64).permute(1, 0, 2))


def test_refit_head_is_the_probe_on_all_training_clips_of_the_selected_encoder():
    """With lr 0 the encoder stays; --refit-head then makes the head the logistic regression on ALL clips
    (fit + validation), not the fit-split probe the head started from."""
    from maskspec_fast import Classifier

    models, folds = _tiny_setup()
    x, y = torch.cat([folds[1][0], folds[2][0]]), torch.cat([folds[1][1], folds[2][1]])
    clf = Classifier.from_model(models["pretrained"], 3)
    want = torch.nn.Linear(clf.head.in_features, 3)
    ssl_eval.recipes.set_head_from_probe(want, *ssl_eval.fit_probe(ssl_eval.embed(clf, x), y, 3, 1e-3, 200))
    rec = ssl_eval.recipe_from_args(_args()).replace(lr=0.0, min_lr=0.0, epochs=1.0, val_fraction=0.3,
                                                     refit_head=False)
    report = ssl_eval.finetune(copy.deepcopy(clf), x, y, rec, seed=5, num_classes=3)
    assert report["val_clips"] > 0
    unfitted = copy.deepcopy(clf)
    ssl_eval.finetune(unfitted, x, y, rec, seed=5, num_classes=3)
    ssl_eval.finetune(clf, x, y, rec.replace(refit_head=True), seed=5, num_classes=3)
    # two runs of an iterative solver (L-BFGS) from different starting heads: its stopping tolerance, not rounding
    torch.testing.assert_close(clf.head.weight, want.weight, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(unfitted.head.weight, want.weight, atol=1e-3)  # the fit-split probe differs


def test_paired_differences_count_folds_won_tied_and_lost():
    summary = {"a": {"per_fold": {"1": 0.5, "2": 0.7, "3": 0.6}}, "b": {"per_fold": {"1": 0.4, "2": 0.7, "3": 0.8}}}
    p = ssl_eval.paired_differences(summary, "a", ["a", "b", "missing"])
    assert list(p) == ["b"]
    assert (p["b"]["won"], p["b"]["tied"], p["b"]["lost"]) == (1, 1, 1)
    assert p["b"]["mean"] == pytest.approx((0.1 + 0.0 - 0.2) / 3)
    assert ssl_eval.paired_differences(summary, "absent", ["a"]) == {}


def test_interpolate_states_is_wise_ft_on_float_tensors_only():
    a = {"w": torch.randn(3, 4), "n": torch.tensor(2)}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(7)}
    mid = ssl_eval.interpolate_states(a, b, 0.25)
    torch.testing.assert_close(mid["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert mid["n"] == 7  # integer buffers (counters) are the end's
    torch.testing.assert_close(ssl_eval.interpolate_states(a, b, 1.0)["w"], b["w"])
