"""The fine-tuning recipe's command-line flags, declared once.

``python -m maskspec_fast.train finetune`` and ``experiments/ssl_eval.py`` both declare them with
:func:`add_recipe_flags` (the harness under some names of its own, e.g. ``--finetune-epochs``) and read them back
with :func:`recipe_from_flags`. Every flag defaults to None: unset, the value comes from
:class:`~maskspec_fast.train.recipe.FinetuneRecipe`, the one home of the fine-tuning defaults (shown in brackets).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import POOLS
from .recipe import FinetuneRecipe


@dataclass(frozen=True)
class RecipeFlag:
    """One recipe field on the command line: argparse keywords (besides ``default``/``help``) and its help text,
    given the recipe whose defaults it shows."""

    name: str  # FinetuneRecipe field
    help: Callable[[FinetuneRecipe], str]
    kwargs: dict[str, Any] = field(default_factory=dict)


FLAGS: tuple[RecipeFlag, ...] = (
    RecipeFlag("epochs", lambda r: f"epochs of the fit split, used without --steps [{r.epochs:g}]", {"type": float}),
    RecipeFlag("warmup_epochs", lambda r: f"used without --warmup-steps [{r.warmup_epochs:g}]", {"type": float}),
    RecipeFlag("batch_size", lambda r: f"clips per optimizer step [{r.batch_size}]", {"type": int}),
    RecipeFlag("lr", lambda r: f"peak AdamW lr of the head [{r.lr:g}]", {"type": float}),
    RecipeFlag("betas", lambda r: f"AdamW betas [{r.betas[0]:g} {r.betas[1]:g}]",
               {"type": float, "nargs": 2, "metavar": ("B1", "B2")}),
    RecipeFlag("val_fraction", lambda r: "share of the training data held out (stratified) to pick the best "
               "checkpoint and stop early; the final model is that checkpoint (0: no split, the last step's model; "
               "ignored by `train finetune` when --eval-data with --eval-every asks to select on the evaluation data) "
               f"[{r.val_fraction:g}]", {"type": float}),
    RecipeFlag("patience", lambda r: "validation evaluations without improvement before stopping (0: never stop "
               f"early) [{r.patience}]", {"type": int}),
    RecipeFlag("eval_every_epochs", lambda r: f"[{r.eval_every_epochs:g}]", {"type": float}),
    RecipeFlag("head_init", lambda r: "head: MAE's near-zero init, or the logistic regression on frozen fit-split "
               f"embeddings (LP-FT) [{r.head_init}]", {"choices": ["zero", "probe"]}),
    RecipeFlag("refit_head", lambda r: "after checkpoint selection on the validation split, refit the head as a "
               "logistic regression on the selected encoder's embeddings of all training clips (fit + validation) "
               f"[{r.refit_head}]", {"action": argparse.BooleanOptionalAction}),
    RecipeFlag("head_l2", lambda r: f"L2 penalty of the logistic-regression head [{r.head_l2:g}]", {"type": float}),
    RecipeFlag("pool", lambda r: "classifier pooling (ModelConfig.pool): mean over all patch tokens "
               "(timm-compatible); freq: the mean per frequency row, rows concatenated (patchout then drops whole "
               f"time columns); freq_stats: freq plus each row's std over time [{r.pool}]", {"choices": list(POOLS)}),
    RecipeFlag("layer_decay", lambda r: f"layer-wise lr decay of a pre-trained encoder [{r.layer_decay:g}]",
               {"type": float}),
    RecipeFlag("drop_path", lambda r: f"[{r.drop_path:g}]", {"type": float}),
    RecipeFlag("label_smoothing", lambda r: f"[{r.label_smoothing:g}]", {"type": float}),
    RecipeFlag("patchout_fraction", lambda r: f"share of patch tokens dropped per clip in training "
               f"[{r.patchout_fraction:g}]", {"type": float}),
    RecipeFlag("time_roll", lambda r: f"random circular time shift per clip [{r.time_roll}]",
               {"action": argparse.BooleanOptionalAction}),
    RecipeFlag("freq_mask", lambda r: "SpecAugment: one frequency band of up to N mel bins masked per clip "
               f"(paper: 48; 0: off) [{r.freq_mask}]", {"type": int}),
    RecipeFlag("time_mask", lambda r: "SpecAugment: one time span of up to N frames per 10 s masked per clip, "
               f"scaled to the clip length (paper: 192; 0: off) [{r.time_mask}]", {"type": int}),
    RecipeFlag("gain_db", lambda r: "random level change per clip, uniform in +-DB (exact in the power domain; "
               f"0: off) [{r.gain_db:g}]", {"type": float, "metavar": "DB"}),
    RecipeFlag("tilt_db", lambda r: "random spectral tilt per clip: uniform in +-DB from the lowest to the "
               f"highest mel bin (0: off) [{r.tilt_db:g}]", {"type": float, "metavar": "DB"}),
    RecipeFlag("mixup", lambda r: "mixup with lam = max(u, 1-u), u ~ Beta(ALPHA, ALPHA) per clip, soft targets "
               f"(PaSST: 0.3; 0: off). Clips are paired within each process's micro-batch [{r.mixup:g}]",
               {"type": float, "metavar": "ALPHA"}),
)
BY_NAME = {f.name: f for f in FLAGS}


def add_recipe_flags(group: Any, fields: Iterable[str], names: Mapping[str, str] | None = None,
                     recipe: FinetuneRecipe | None = None) -> dict[str, str]:
    """Declare the flags of recipe ``fields`` on ``group`` (a parser or an argument group), each as
    ``--field-name`` or under ``names[field]``; defaults None (the recipe's, from ``recipe``, shown in the help).
    Returns ``{field: argparse dest}`` for :func:`recipe_from_flags`."""
    r, names, dests = recipe or FinetuneRecipe(), dict(names or {}), {}
    for name in fields:
        flag = BY_NAME[name]
        opt = names.get(name, "--" + name.replace("_", "-"))
        action = group.add_argument(opt, default=None, help=flag.help(r), **flag.kwargs)
        dests[name] = action.dest
    return dests


def recipe_from_flags(args: argparse.Namespace, dests: Mapping[str, str],
                      recipe: FinetuneRecipe | None = None) -> FinetuneRecipe:
    """``recipe`` (default: the recipe's defaults) with the flags that were given on top."""
    given = {name: getattr(args, dest, None) for name, dest in dests.items()}
    if given.get("betas") is not None:
        given["betas"] = tuple(given["betas"])
    return (recipe or FinetuneRecipe()).replace(**{k: v for k, v in given.items() if v is not None})


__all__ = ["BY_NAME", "FLAGS", "RecipeFlag", "add_recipe_flags", "recipe_from_flags"]
