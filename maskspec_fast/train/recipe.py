"""The fine-tuning recipe for small labeled sets: the one home of the fine-tuning defaults, and the rules that turn
(training-set size, batch size) into the length, schedule, validation split and checkpoint selection.
:func:`maskspec_fast.train.finetune.finetune` runs it; ``python -m maskspec_fast.train finetune`` and
``experiments/ssl_eval.py`` both call that function, so the harness measures what users get.

Why these defaults (measured on the real-recordings set of ``experiments/build_real_eval.py``, see
``experiments/SSL_EVAL.md``): a fixed step count (the old 50 steps) is 3 epochs of 480 clips and 18 of 88;
length is therefore set in epochs. Checkpoint selection uses a stratified validation split carved out of the
TRAINING clips only (never the test fold), evaluated every ``eval_every_epochs``; the best validation accuracy
(ties: lower validation loss) wins and training stops after ``patience`` evaluations without improvement.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..data.interfaces import Source


@dataclass(frozen=True)
class FinetuneRecipe:
    """Fine-tuning hyper-parameters. Lengths are in epochs of the FIT split (training clips minus validation).

    ``lr`` is the absolute peak lr of the head (the top group); encoder block ``i`` of ``N`` gets
    ``lr * layer_decay ** (N - i)`` (see :func:`maskspec_fast.train.schedule.param_groups`). AdamW with ``betas``
    and ``weight_decay`` (none on biases, norms and tokens), gradients clipped to norm ``clip_grad``; ``batch_size``
    clips per step (epochs hold ``fit // batch_size`` full batches, the trainer's rule).
    ``patchout_fraction``: share of patch tokens dropped per clip in training (with ``pool="freq"`` as whole time
    columns). ``time_roll``: random circular time shift per clip. ``freq_mask`` / ``time_mask``: SpecAugment limits
    (time per 10 s, scaled to the clip). ``pool``: the Classifier's pooling (``ModelConfig.pool``).
    ``head_init``: ``"probe"`` starts the head as the logistic regression on frozen fit-split embeddings (LP-FT;
    the start is evaluated too, so fine-tuning can only replace it by a checkpoint that validates better), or
    ``"zero"`` (MAE's near-zero head). ``refit_head``: after selection, the head is refitted as that logistic
    regression on the selected encoder's embeddings of ALL training clips (fit + validation), so the final model
    uses every labeled clip (the validation split only chose the encoder). ``head_l2``: the L2 penalty of that
    logistic regression. ``gain_db`` / ``tilt_db``: random level and spectral tilt per clip
    (:func:`maskspec_fast.train.augment.apply_gain`).
    """

    epochs: float = 15.0
    warmup_epochs: float = 2.0
    lr: float = 1e-4
    min_lr: float = 1e-6
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float = 1.0
    drop_path: float = 0.0
    label_smoothing: float = 0.0
    patchout_fraction: float = 0.75
    time_roll: bool = True
    gain_db: float = 0.0
    tilt_db: float = 0.0
    freq_mask: int = 0
    time_mask: int = 0
    mixup: float = 0.0
    val_fraction: float = 0.15
    eval_every_epochs: float = 1.0
    patience: int = 6
    batch_size: int = 32
    pool: str = "freq_stats"
    head_init: str = "probe"
    refit_head: bool = True
    head_l2: float = 1e-3

    def replace(self, **changes) -> FinetuneRecipe:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Schedule:
    """The recipe resolved for one training set: optimizer steps, warm-up steps, evaluation period (steps)."""

    fit_clips: int
    val_clips: int
    steps_per_epoch: int
    steps: int
    warmup_steps: int
    eval_every: int
    patience: int


def split_sizes(n_train: int, val_fraction: float) -> tuple[int, int]:
    """``(fit, val)`` clip counts: ``val = round(n * fraction)``, at least 1 and at most ``n - 1``;
    ``val_fraction = 0`` gives ``(n, 0)``. The split is stratified (:func:`stratified_split`), so on a set with
    more classes than validation clips some classes have none there: the held-out share stays the one asked for."""
    if val_fraction <= 0:
        return n_train, 0
    if n_train < 2:
        raise ValueError(f"a validation split needs at least 2 training clips, got {n_train} (use val_fraction 0)")
    val = min(max(int(round(n_train * val_fraction)), 1), n_train - 1)
    return n_train - val, val


def resolve(recipe: FinetuneRecipe, n_train: int) -> Schedule:
    """Steps from epochs: ``steps_per_epoch = fit // batch`` (full batches, as the trainer runs them; at least 1),
    ``steps = round(epochs * steps_per_epoch)`` (at least 1), warm-up and evaluation period likewise (evaluation at
    least every step, never 0 when a validation split exists)."""
    fit, val = split_sizes(n_train, recipe.val_fraction)
    spe = max(1, fit // recipe.batch_size)
    steps = max(1, int(round(recipe.epochs * spe)))
    warmup = min(steps - 1, int(round(recipe.warmup_epochs * spe))) if steps > 1 else 0
    eval_every = max(1, int(round(recipe.eval_every_epochs * spe))) if val else 0
    return Schedule(fit, val, spe, steps, max(0, warmup), eval_every, recipe.patience)


def patchout_tokens(recipe: FinetuneRecipe, num_patches: int) -> int:
    """Patch tokens dropped per clip: ``floor(fraction * L)``, leaving at least one token."""
    return max(0, min(num_patches - 1, int(recipe.patchout_fraction * num_patches)))


def stratified_split(labels: torch.Tensor, val_clips: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, val)`` of a class-stratified split of the TRAINING labels ``(N,)`` with ``val_clips``
    validation clips: each class gives ``round(val_clips * n_c / N)`` clips (largest remainders fill up), drawn
    at random from ``generator``. Multi-label ``(N, C)`` labels are split at random (no stratification)."""
    n = labels.shape[0]
    if val_clips <= 0:
        return torch.arange(n), torch.zeros(0, dtype=torch.long)
    if labels.dim() != 1:
        perm = torch.randperm(n, generator=generator)
        return perm[val_clips:].sort().values, perm[:val_clips].sort().values
    classes = labels.unique()
    counts = torch.stack([(labels == c).sum() for c in classes]).double()
    share = counts * val_clips / n
    take = share.floor().long()
    rest = val_clips - int(take.sum())
    if rest > 0:
        order = torch.argsort(share - share.floor(), descending=True, stable=True)
        take[order[:rest]] += 1
    val = []
    for c, k in zip(classes, take.tolist()):
        idx = (labels == c).nonzero().flatten()
        val.append(idx[torch.randperm(idx.numel(), generator=generator)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().flatten(), val_idx


class BestTracker:
    """Checkpoint selection and early stopping: ``update(step, acc, loss)`` returns True when (acc, -loss) beats
    the best so far (higher validation accuracy; on a tie, lower validation loss). ``should_stop`` is True after
    ``patience`` consecutive updates without improvement (``patience <= 0``: never)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best: tuple[float, float] | None = None
        self.best_step = -1
        self.bad = 0

    def update(self, step: int, accuracy: float, loss: float) -> bool:
        key = (accuracy, -loss)
        if self.best is None or key > self.best:
            self.best, self.best_step, self.bad = key, step, 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad >= self.patience


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-3,
                            iters: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardized features (statistics of ``x``), fitted by L-BFGS in float64:

    ``min_{W,b} mean_i CE(W z_i + b, y_i) + l2 * ||W||^2``,  ``z = (x - mu) / sigma``.
    ``x (N, D)``, ``y (N,)`` -> ``W (D, C)``, ``b (C,)`` (float64), ``mu``, ``sigma`` ``(D,)``.
    """
    import torch.nn.functional as F

    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mu) / sd).double()
    w = torch.zeros(z.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach(), mu, sd


@torch.no_grad()
def set_head_from_probe(head: torch.nn.Linear, w: torch.Tensor, b: torch.Tensor, mu: torch.Tensor,
                        sd: torch.Tensor) -> None:
    """LP-FT: make ``head(e)`` equal the probe's logits ``((e - mu) / sd) @ w + b``, i.e.
    ``weight = (w / sd).T`` and ``bias = b - (mu / sd) @ w``."""
    sd64, mu64 = sd.double(), mu.double()
    head.weight.copy_((w / sd64.unsqueeze(1)).T.to(head.weight.dtype))
    head.bias.copy_((b - (mu64 / sd64) @ w).to(head.bias.dtype))


def train_val_split(source: Source, recipe: FinetuneRecipe, seed: int) -> tuple[Source, Source | None]:
    """``(fit, val)`` subsets of a TRAINING source by :func:`stratified_split` of ``source.labels()`` (``val``
    None without a split). Each is a source of its own (:meth:`~maskspec_fast.data.interfaces.Source.subset`):
    its order, weights and streaming cover its clips only."""
    _, n_val = split_sizes(len(source), recipe.val_fraction)
    if n_val == 0:
        return source, None
    fit, val = stratified_split(source.labels(), n_val, torch.Generator().manual_seed(int(seed)))
    return source.subset(fit), source.subset(val)


__all__ = ["BestTracker", "FinetuneRecipe", "Schedule", "fit_logistic_regression", "patchout_tokens", "resolve",
           "set_head_from_probe", "split_sizes", "stratified_split", "train_val_split"]
