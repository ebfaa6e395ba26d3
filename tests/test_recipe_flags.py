"""The fine-tuning recipe's flags are declared once (``maskspec_fast.train.recipe_flags``): ``train finetune`` and
``experiments/ssl_eval.py`` show the same help for each and turn the same values into the same recipe."""
import sys
from pathlib import Path

from maskspec_fast.train.cli import build_parser, recipe_from_args
from maskspec_fast.train.recipe import FinetuneRecipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "experiments"))
import ssl_eval  # noqa: E402


def _finetune_parser():
    sub = next(a for a in build_parser()._actions if a.choices and "finetune" in a.choices)
    return sub.choices["finetune"]


def _helps(parser):
    return {a.dest: a.help for a in parser._actions}


def test_shared_fields_have_one_help_text():
    cli, harness = _helps(_finetune_parser()), _helps(ssl_eval.build_parser())
    shared = [f for f in ssl_eval.HARNESS_RECIPE_FIELDS if f in cli and f not in ssl_eval.HARNESS_FLAG_NAMES]
    assert len(shared) >= 15
    for f in shared:
        assert cli[f] == harness[f], f


def test_the_same_flags_give_the_same_recipe():
    flags = ["--warmup-epochs", "0.5", "--mixup", "0.3", "--freq-mask", "48", "--no-time-roll", "--betas", "0.8",
             "0.99", "--pool", "mean", "--no-refit-head"]
    cli = recipe_from_args(build_parser().parse_args(["finetune", "--data", "x", "--epochs", "3", *flags]))
    harness = ssl_eval.recipe_from_args(ssl_eval.build_parser().parse_args(["--finetune-epochs", "3", *flags]))
    assert cli == harness.replace(head_l2=cli.head_l2)
    assert (cli.epochs, cli.mixup, cli.time_roll, cli.betas, cli.refit_head) == (3.0, 0.3, False, (0.8, 0.99), False)
    assert recipe_from_args(build_parser().parse_args(["finetune", "--data", "x"])) == FinetuneRecipe()
