"""Evaluation of a classifier on a whole data set: logits in dataset order (:func:`predict`), the metric
(:func:`evaluate`: accuracy, or mAP for multi-label sets) and the periodic evaluator the trainer calls."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.interfaces import Source
from ..frontend.logmel import LogMel
from .distributed import DistInfo, all_gather_objects
from .inputs import batch_spec
from .metrics import accuracy, mean_average_precision
from .sampler import ResumableSampler

Evaluator = Callable[[torch.nn.Module], tuple[str, float, dict]]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` (``fp32``: disabled; ``bf16``/``fp16``: that dtype)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: Source,
    frontend: LogMel,
    device: torch.device,
    *,
    batch_size: int = 32,
    workers: int = 0,
    precision: str = "fp32",
    quiet: bool = True,
    dist_info: DistInfo | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, C)`` and labels over a whole dataset, in dataset order (nothing dropped).

    Multi-process: each rank predicts every w-th clip and the results are gathered (the padding that evens the
    ranks out is dropped), so every rank returns the same full tensors.
    """
    from ..data import collate

    info = dist_info or DistInfo()
    was_training, fe_training = model.training, frontend.training
    model.eval()
    frontend.eval()
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(dataset, batch_size=max(1, batch_size // info.world_size), sampler=sampler,
                        num_workers=workers, collate_fn=collate, drop_last=False)
    outs, labels = [], []
    for b in tqdm(loader, desc="eval", unit="batch", disable=quiet or not info.is_main, dynamic_ncols=True):
        spec = batch_spec(b, dataset.provides, frontend, device)
        with autocast(device, precision):
            outs.append(model(spec).float().cpu())
        labels.append(b["label"])
    model.train(was_training)
    frontend.train(fe_training)
    # positions from the sampler, not b["index"]: a replaced bad file reports its replacement's index
    logits, labels_t, index_t = torch.cat(outs), torch.cat(labels), torch.tensor(sampler.indices(), dtype=torch.long)
    if info.world_size > 1:
        parts = all_gather_objects((logits, labels_t, index_t))
        logits = torch.cat([p[0] for p in parts])
        labels_t = torch.cat([p[1] for p in parts])
        index_t = torch.cat([p[2] for p in parts])
    order = torch.full((len(dataset),), -1, dtype=torch.long)
    order[index_t] = torch.arange(len(index_t))  # a padded duplicate overwrites its own equal copy
    return logits[order], labels_t[order]


def evaluate(clf: torch.nn.Module, dataset: Source, device: torch.device, **predict_kw) -> dict:
    """``{"accuracy", "loss", "clips", "chance"}`` (single-label) or ``{"mAP", "loss", "clips"}`` (multi-label) of
    ``clf``; ``loss`` is the plain cross-entropy (BCE) of the logits, the tie-breaker of checkpoint selection."""
    if dataset.num_classes != clf.num_classes:
        raise ValueError(f"{dataset!r}: {dataset.num_classes} classes, the classifier has {clf.num_classes}")
    logits, labels = predict(clf, dataset, LogMel().to(device), device, **predict_kw)
    if dataset.multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, labels.float()).item()
        return {"mAP": mean_average_precision(torch.sigmoid(logits), labels), "loss": loss, "clips": len(dataset)}
    loss = F.cross_entropy(logits, labels).item()
    return {"accuracy": accuracy(logits, labels), "loss": loss, "clips": len(dataset),
            "chance": 1.0 / dataset.num_classes}


def describe(metrics: dict, name: str) -> str:
    """One line for the log: ``eval on NAME: accuracy = ... over N clips (chance ...)``."""
    if "mAP" in metrics:
        return f"eval on {name}: mAP = {metrics['mAP']:.4f} over {metrics['clips']} clips"
    return (f"eval on {name}: accuracy = {metrics['accuracy']:.4f} over {metrics['clips']} clips "
            f"(chance {metrics['chance']:.4f})")


def make_evaluator(dataset: Source, device: torch.device, **predict_kw) -> Evaluator:
    """The trainer's periodic evaluation: ``model -> (metric name, value (higher is better), all metrics)``."""

    def run(model: torch.nn.Module) -> tuple[str, float, dict]:
        metrics = evaluate(model, dataset, device, **predict_kw)
        name = "mAP" if "mAP" in metrics else "accuracy"
        return name, metrics[name], metrics

    return run


__all__ = ["Evaluator", "autocast", "describe", "evaluate", "make_evaluator", "predict"]
