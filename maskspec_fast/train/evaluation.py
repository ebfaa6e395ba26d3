"""Evaluation of a classifier on a whole data set: logits in dataset order (:func:`predict`), the metric
(:func:`evaluate`: accuracy, or mAP for multi-label sets) and the periodic evaluator the trainer calls."""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.base import DatasetError
from ..data.carry import CarryErrors, collate_or_failure, raise_failure
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


class Predictions(NamedTuple):
    """What :func:`predict` returns: ``logits (N', C)`` and ``labels`` of the clips that were read, in dataset order,
    ``index (N',)`` their positions in the source, and ``omitted``: ``[(index, path, problem)]`` of the bad clips
    left out (skip mode; never replaced by another clip)."""

    logits: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    omitted: list[tuple[int, str, str]]


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
) -> Predictions:
    """The model's outputs over a whole data set, in dataset order, each clip once (see :class:`Predictions`).

    Clips are read with ``dataset.clip(i)``: a bad file raises (``on_error="raise"``, its :class:`AudioFileError`
    keeps its type from any DataLoader worker) or, in skip mode, is left out and listed in ``omitted``; no clip is
    scored in its place. Multi-process: each rank predicts every w-th clip and the results are gathered (the
    padding that evens the ranks out is dropped), so every rank returns the same result.
    """
    info = dist_info or DistInfo()
    was_training, fe_training = model.training, frontend.training
    model.eval()
    frontend.eval()
    sampler = ResumableSampler(len(dataset), shuffle=False, rank=info.rank, world_size=info.world_size)
    loader = DataLoader(CarryErrors(dataset, read="clip"), batch_size=max(1, batch_size // info.world_size),
                        sampler=sampler, num_workers=workers, collate_fn=collate_or_failure, drop_last=False)
    positions = torch.tensor(sampler.indices(), dtype=torch.long)  # a sample's own "index" may be a parent's id
    outs, labels, index, omitted, seen = [], [], [], [], 0
    for b in tqdm(loader, desc="eval", unit="batch", disable=quiet or not info.is_main, dynamic_ncols=True):
        b = raise_failure(b)
        pos = positions[seen : seen + len(b["label"])]
        seen += len(pos)
        keep = ~b["omitted"]
        omitted += [(int(p), path, why) for p, (path, why) in zip(pos[~keep].tolist(), b["omitted_files"])]
        if not keep.any():
            continue
        spec = batch_spec(b, dataset.provides, frontend, device)[keep.to(device)]
        with autocast(device, precision):
            outs.append(model(spec).float().cpu())
        labels.append(b["label"][keep])
        index.append(pos[keep])
    model.train(was_training)
    frontend.train(fe_training)
    parts = [(outs, labels, index, omitted)]
    if info.world_size > 1:
        parts = all_gather_objects(parts[0])
    outs = [o for p in parts for o in p[0]]
    if not outs:
        raise DatasetError(f"{dataset!r}: none of its {len(dataset)} clips could be read "
                           f"(first: {omitted[0][1]}: {omitted[0][2]})" if omitted else f"{dataset!r} is empty")
    logits, labels_t = torch.cat(outs), torch.cat([x for p in parts for x in p[1]])
    index_t = torch.cat([x for p in parts for x in p[2]])
    # dataset order, each clip once (a rank's padding repeats a clip another rank also scored)
    order = torch.full((len(dataset),), -1, dtype=torch.long)
    order[index_t] = torch.arange(len(index_t))
    order = order[order >= 0]
    left_out = sorted({o[0]: o for p in parts for o in p[3]}.values())
    return Predictions(logits[order], labels_t[order], index_t[order], left_out)


def evaluate(clf: torch.nn.Module, dataset: Source, device: torch.device, **predict_kw) -> dict:
    """``{"accuracy", "loss", "clips", "chance", "omitted", "bad_files"}`` (single-label) or ``{"mAP", "loss",
    "clips", "omitted", "bad_files"}`` (multi-label) of ``clf``; ``loss`` is the plain cross-entropy (BCE) of the
    logits, the tie-breaker of checkpoint selection. ``clips`` counts the clips scored; ``omitted`` the bad files
    left out (skip mode), listed as ``[path, problem]`` in ``bad_files``."""
    if dataset.num_classes != clf.num_classes:
        raise ValueError(f"{dataset!r}: {dataset.num_classes} classes, the classifier has {clf.num_classes}")
    pred = predict(clf, dataset, LogMel().to(device), device, **predict_kw)
    logits, labels = pred.logits, pred.labels
    bad = {"omitted": len(pred.omitted), "bad_files": [[path, why] for _, path, why in pred.omitted]}
    if dataset.multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, labels.float()).item()
        return {"mAP": mean_average_precision(torch.sigmoid(logits), labels), "loss": loss, "clips": len(logits),
                **bad}
    loss = F.cross_entropy(logits, labels).item()
    return {"accuracy": accuracy(logits, labels), "loss": loss, "clips": len(logits),
            "chance": 1.0 / dataset.num_classes, **bad}


def describe(metrics: dict, name: str) -> str:
    """One line for the log: ``eval on NAME: accuracy = ... over N clips (chance ...)[; K bad files left out]``."""
    left = metrics.get("omitted", 0)
    note = f"; {left} bad file{'s' if left != 1 else ''} left out (not scored): {metrics['bad_files'][0][0]}" + (
        " ..." if left > 1 else "") if left else ""
    if "mAP" in metrics:
        return f"eval on {name}: mAP = {metrics['mAP']:.4f} over {metrics['clips']} clips{note}"
    return (f"eval on {name}: accuracy = {metrics['accuracy']:.4f} over {metrics['clips']} clips "
            f"(chance {metrics['chance']:.4f}){note}")


def make_evaluator(dataset: Source, device: torch.device, **predict_kw) -> Evaluator:
    """The trainer's periodic evaluation: ``model -> (metric name, value (higher is better), all metrics)``."""

    def run(model: torch.nn.Module) -> tuple[str, float, dict]:
        metrics = evaluate(model, dataset, device, **predict_kw)
        name = "mAP" if "mAP" in metrics else "accuracy"
        return name, metrics[name], metrics

    return run


__all__ = ["Evaluator", "Predictions", "autocast", "describe", "evaluate", "make_evaluator", "predict"]
