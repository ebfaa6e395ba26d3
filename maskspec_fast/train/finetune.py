"""The one fine-tuning procedure: split -> LP-FT head -> :class:`~maskspec_fast.train.loop.Trainer` -> checkpoint
selection -> head refit. ``python -m maskspec_fast.train finetune``, ``experiments/ssl_eval.py`` and Python users
all call :func:`finetune`; the defaults live in :class:`~maskspec_fast.train.recipe.FinetuneRecipe` only.

    from maskspec_fast import Classifier
    from maskspec_fast.data import build_dataset
    from maskspec_fast.train import TrainConfig, finetune
    clf = Classifier.from_pretrained("runs/pt/final", num_classes=50)
    result = finetune(clf, build_dataset("esc50:ESC-50:folds=1,2,3,4", train=True), run=TrainConfig(out="runs/ft"))
    result.model  # the selected encoder with its refitted head; saved in runs/ft/final

Steps (each a rule of the recipe, applied in this order):

1. ``fit, val = train_val_split(source)``: a stratified ``val_fraction`` of the TRAINING clips (never test data);
   both are sources of their own. With ``eval_source`` and ``eval_every`` the caller selects on that set instead.
2. The schedule from the fit split's size (:func:`~maskspec_fast.train.recipe.resolve`): epochs -> steps.
3. ``head_init="probe"``: the head := the logistic regression on frozen fit-split embeddings (LP-FT).
4. The trainer runs :class:`~maskspec_fast.train.tasks.FinetuneTask` (the recipe's augmentations and loss) with
   AdamW(recipe betas, weight decay), warm-up + cosine, evaluating the validation split every
   ``eval_every_epochs`` (the start included) and stopping after ``patience`` evaluations without improvement.
5. The best validation checkpoint is loaded; with ``refit_head`` its head is refitted on ALL training clips.
6. ``out/final`` holds the model; ``out/config.json`` the resolved settings (recipe, the schedule that runs, trainer
   config).

Batch size: the recipe's, unless ``run`` (a :class:`TrainConfig`) gives one other than its default 32: that one
wins (the schedule is computed from it); both given and different is a ``ValueError``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.interfaces import Source
from ..frontend.logmel import LogMel
from ..model import Classifier
from . import recipe as recipes
from .checkpoint import latest_checkpoint
from .config import TrainConfig
from .distributed import DistInfo
from .evaluation import make_evaluator, predict
from .loop import train
from .state import load_checkpoint_weights
from .tasks import FinetuneTask


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    ``model``: the final classifier (selected checkpoint, refitted head); ``evals``: every validation evaluation
    ``{"step", "metric", "value", "loss", "best"}`` in order; ``best``: the selected one (None without
    evaluations); ``settings``: the resolved settings written to ``out/config.json``; ``summary``: the trainer's.
    """

    model: Classifier
    steps: int
    fit_clips: int
    val_clips: int
    evals: list[dict[str, Any]]
    best: dict[str, Any] | None
    final: str
    settings: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def selected_step(self) -> int:
        """The step of the model that was kept (the last step when nothing was selected)."""
        return int(self.best["step"]) if self.best else self.steps


_DEFAULT_BATCH = TrainConfig.__dataclass_fields__["batch_size"].default
_RECIPE_BATCH = recipes.FinetuneRecipe.__dataclass_fields__["batch_size"].default


def _batch_size(recipe: recipes.FinetuneRecipe, run: TrainConfig) -> recipes.FinetuneRecipe:
    """The recipe with the run's batch size when the ``TrainConfig`` sets one (other than its default): an
    explicit ``TrainConfig(batch_size=...)`` wins, and the schedule (epochs -> steps) is computed from it. Both
    set, to different values, is refused in one line (which one was meant cannot be told)."""
    if run.batch_size == _DEFAULT_BATCH or run.batch_size == recipe.batch_size:
        return recipe
    if recipe.batch_size != _RECIPE_BATCH:
        raise ValueError(f"TrainConfig(batch_size={run.batch_size}) and FinetuneRecipe(batch_size="
                         f"{recipe.batch_size}) disagree: set one of them")
    return recipe.replace(batch_size=run.batch_size)


def train_config_for(recipe: recipes.FinetuneRecipe, schedule: recipes.Schedule, run: TrainConfig, *,
                     steps: int | None = None, warmup_steps: int | None = None, lr: float | None = None,
                     blr: float | None = None) -> TrainConfig:
    """``run`` with the recipe's optimization settings and the schedule's lengths filled in.

    ``run`` carries how the run executes (out, precision, workers, checkpoints, ...); the recipe decides batch size,
    lr, betas, weight decay, clipping and evaluation period; ``steps``/``warmup_steps``/``lr``/``blr`` override.
    """
    steps = schedule.steps if steps is None else steps
    warmup = min(schedule.warmup_steps, max(0, steps - 1)) if warmup_steps is None else warmup_steps
    if lr is None and blr is None:
        lr = recipe.lr
    return run.replace(steps=steps, warmup_steps=warmup, lr=lr, blr=blr if blr is not None else run.blr,
                       batch_size=recipe.batch_size, min_lr=recipe.min_lr, weight_decay=recipe.weight_decay,
                       betas=tuple(recipe.betas), clip_grad=recipe.clip_grad, eval_every=schedule.eval_every,
                       eval_at_start=schedule.eval_every > 0, patience=schedule.patience if schedule.val_clips else 0)


@torch.no_grad()
def fit_head(clf: Classifier, source: Source, recipe: recipes.FinetuneRecipe, device: torch.device,
             **predict_kw: Any) -> None:
    """Set ``clf.head`` to the logistic regression (:func:`~maskspec_fast.train.recipe.fit_logistic_regression`,
    L2 ``recipe.head_l2``) on ``clf``'s frozen embeddings ``(N, D)`` of ``source``'s clips."""
    head = clf.head
    clf.head = torch.nn.Identity()  # predict() then returns the clip embeddings
    try:
        emb, labels = predict(clf, source, LogMel().to(device), device, **predict_kw)[:2]
    finally:
        clf.head = head
    w, b, mu, sd = recipes.fit_logistic_regression(emb.double().cpu(), labels.cpu(), clf.num_classes, recipe.head_l2)
    recipes.set_head_from_probe(clf.head, w.to(device), b.to(device), mu.to(device), sd.to(device))


def finetune(
    clf: Classifier,
    source: Source,
    recipe: recipes.FinetuneRecipe | None = None,
    run: TrainConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    steps: int | None = None,
    warmup_steps: int | None = None,
    lr: float | None = None,
    blr: float | None = None,
    patchout: int | None = None,
    eval_source: Source | None = None,
    eval_every: int = 0,
    log: Callable[..., None] = print,
    dist_info: DistInfo | None = None,
    extra_settings: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``clf`` on the training clips of ``source`` by ``recipe`` (module doc); returns what was done.

    ``clf``: a :class:`Classifier` (pre-trained encoder, new head); ``source``: labeled clips
    (:class:`~maskspec_fast.data.interfaces.MapSource` or ``StreamSource``, waveforms or log-mel); ``run``: how the
    trainer runs (``out``, ``seed``, ``precision``, ``workers``, ``frontend``, checkpoints, ...; its optimization
    fields are replaced by the recipe's). ``steps`` / ``warmup_steps`` / ``lr`` / ``blr`` / ``patchout`` (tokens)
    override the recipe. ``eval_source`` + ``eval_every``: select the checkpoint on that set every N steps instead
    of a validation split (no split, no early stop). ``extra_settings`` are recorded in ``config.json``.
    """
    recipe = recipe or recipes.FinetuneRecipe()
    run = run or TrainConfig(out="runs/finetune")
    recipe = _batch_size(recipe, run)
    device = torch.device(device)
    info = dist_info or DistInfo()
    if eval_every and eval_source is None:
        raise ValueError("eval_every needs eval_source (--eval-every needs --eval-data)")
    if eval_source is not None and eval_every:  # explicit: select on eval_source every N steps
        recipe = recipe.replace(val_fraction=0.0, patience=0)
    if source.num_classes < 1:
        raise ValueError(f"{source!r} has no class labels: fine-tuning needs a labeled set")
    fit, val = recipes.train_val_split(source, recipe, run.seed)
    schedule = recipes.resolve(recipe, len(source))
    if schedule.fit_clips < recipe.batch_size:
        raise ValueError(f"the fit split has {schedule.fit_clips} clips, fewer than one batch of {recipe.batch_size} "
                         "(lower the batch size or the validation fraction)")
    config = train_config_for(recipe, schedule, run, steps=steps, warmup_steps=warmup_steps, lr=lr, blr=blr)
    if eval_source is not None and eval_every:
        config = config.replace(eval_every=eval_every, eval_at_start=False, patience=0)
    clf.patchout = recipes.patchout_tokens(recipe, clf.config.num_patches) if patchout is None else patchout
    clf.to(device)
    predict_kw = dict(batch_size=config.batch_size, workers=config.workers, precision=config.precision,
                      quiet=True, dist_info=info)
    log(f"fine-tuning {len(source)} clips ({source.num_classes} classes, multilabel={source.multilabel}): fit "
        f"{len(fit)}, validation {len(val) if val is not None else 0} (val_fraction {recipe.val_fraction:g}, "
        f"stratified by class); {config.steps} steps (warm-up {config.warmup_steps}, {schedule.steps_per_epoch} "
        f"per epoch), peak lr {config.peak_lr():.3g}, betas {config.betas}, patchout {clf.patchout}")
    # what runs: --steps / --warmup-steps / eval_every override the recipe's schedule
    ran = dataclasses.replace(schedule, steps=config.steps, warmup_steps=config.warmup_steps,
                              eval_every=config.eval_every, patience=config.patience)
    settings = {"recipe": dataclasses.asdict(recipe), "schedule": dataclasses.asdict(ran),
                "epochs": config.steps / schedule.steps_per_epoch,
                "train": config.to_dict(), "model": clf.config.to_dict(), "num_classes": clf.num_classes,
                "patchout": clf.patchout, "clips": {"train": len(source), "fit": len(fit),
                                                    "val": len(val) if val is not None else 0},
                **(extra_settings or {})}
    out = Path(config.out)
    single = not source.multilabel
    resuming = bool(config.resume) and (config.resume != "auto" or latest_checkpoint(out) is not None)
    if recipe.head_init == "probe" and single and not resuming:  # a resumed run restores its trained head
        fit_head(clf, fit, recipe, device, **predict_kw)
        log(f"head initialized from a linear probe on {len(fit)} clips")
    task = FinetuneTask.from_recipe(clf, source.multilabel, recipe)
    select_on = val if val is not None else (eval_source if eval_every else None)
    evaluator = make_evaluator(select_on, device, **predict_kw) if select_on is not None else None
    summary = train(task, fit, config, LogMel().to(device), device, log=log, dist_info=info, evaluate=evaluator,
                    settings=settings)
    best = summary.get("best")
    if best and val is not None:  # the recipe's model is the selected checkpoint
        load_checkpoint_weights(out / "checkpoints" / "best", clf, device, log)
        how = f"the best validation checkpoint (step {best['step']})"
        if recipe.refit_head and single:
            fit_head(clf, source, recipe, device, **predict_kw)
            how += f", its head refitted on all {len(source)} training clips"
        if info.is_main:
            clf.save_pretrained(summary["final"])
        log(f"final model = {how}, saved {summary['final']}")
    return FinetuneResult(model=clf, steps=summary["steps"], fit_clips=len(fit),
                          val_clips=len(val) if val is not None else 0, evals=list(summary["evals"]), best=best,
                          final=summary["final"], settings=settings,
                          summary={k: v for k, v in summary.items() if k not in ("losses",)})


__all__ = ["FinetuneResult", "finetune", "fit_head", "train_config_for"]
