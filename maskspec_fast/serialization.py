"""save_pretrained / from_pretrained: safetensors weights + a JSON config, shared by Model and Classifier.

Everything read here is untrusted input: a malformed ``config.json`` or a weight of the wrong dtype or shape is a
:class:`CheckpointError` whose one-line message names the file and the problem (never a ``KeyError`` or a
``load_state_dict`` traceback, and never a silent cast).
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MODEL_TYPES = ("pretrain", "classifier")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: malformed, hostile, or made for another model. The message is one
    line that names the file and the problem."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); what was half written has been removed."""


def is_disk_full(e: BaseException) -> bool:
    """True for "no space left on device" (or a disk quota) from the OS, safetensors or torch's writers."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def write_failure(folder: Path, what: str, e: BaseException) -> CheckpointWriteError:
    """The one-line error for a failed write of ``what`` into ``folder`` (its errno kept when it has one)."""
    if is_disk_full(e):
        return CheckpointWriteError(errno.ENOSPC, f"{folder}: cannot write {what}: no space left on device")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return CheckpointWriteError(getattr(e, "errno", None) or errno.EIO, f"{folder}: cannot write {what}: {first}")


def save_dir(directory: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` atomically (temporary names, then rename); a failed write
    (e.g. a full disk) removes its temporary files and raises :class:`CheckpointWriteError`."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    tmp_w, tmp_c = d / (WEIGHTS_NAME + ".tmp"), d / (CONFIG_NAME + ".tmp")
    try:
        save_file(tensors, str(tmp_w))
        tmp_c.write_text(json.dumps(meta, indent=2, sort_keys=True))
    except Exception as e:
        for t in (tmp_w, tmp_c):
            t.unlink(missing_ok=True)
        raise write_failure(d, "the model", e) from e
    os.replace(tmp_w, d / WEIGHTS_NAME)
    os.replace(tmp_c, d / CONFIG_NAME)
    return d


def load_dir(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_dir` wrote: ``(state, meta)`` with ``meta`` checked for its structure
    (``model_type``, a ``config`` object, ``num_classes`` of a classifier). A missing file is a
    ``FileNotFoundError``, anything malformed a :class:`CheckpointError`; both name the path."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg, weights = d / CONFIG_NAME, d / WEIGHTS_NAME
    for f in (cfg, weights):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing (expected a directory written by save_pretrained)")
    meta = read_meta(cfg)
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: cannot be read as safetensors ({_one_line(e)})") from e
    return state, meta


def read_meta(path: Path) -> dict[str, Any]:
    """``config.json`` of a save_pretrained directory, its structure checked (see :func:`load_dir`)."""
    try:
        meta = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({_one_line(e)})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{path}: 'model_type' is {meta.get('model_type')!r}, expected one of {MODEL_TYPES}")
    if not isinstance(meta.get("config"), dict):
        what = "missing" if "config" not in meta else f"a {type(meta['config']).__name__}"
        raise CheckpointError(f"{path}: the 'config' object (the ModelConfig fields) is {what}")
    if meta["model_type"] == "classifier":
        n = meta.get("num_classes")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise CheckpointError(f"{path}: 'num_classes' must be an integer >= 1, got {n!r}")
    return meta


def config_from_meta(path: str | os.PathLike, meta: dict[str, Any], **overrides: Any) -> ModelConfig:
    """The ModelConfig that ``meta["config"]`` describes, each field's JSON type checked, then ``overrides``
    (the caller's, not the file's: their errors are not blamed on the file)."""
    cfg_path = Path(path) / CONFIG_NAME if Path(path).is_dir() else Path(path)
    given = meta["config"]
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for name, value in given.items():
        if name not in fields:
            continue  # fields of other versions are ignored, as ModelConfig.from_dict does
        kind = str(fields[name].type)
        ok = {"int": isinstance(value, int) and not isinstance(value, bool),
              "float": isinstance(value, (int, float)) and not isinstance(value, bool),
              "bool": isinstance(value, bool), "str": isinstance(value, str)}.get(kind, True)
        if not ok:
            raise CheckpointError(f"{cfg_path}: config field {name!r} must be {kind}, got {value!r}")
    preset = given.get("preset", "custom")
    if preset != "custom" and preset not in ModelConfig.presets():
        raise CheckpointError(f"{cfg_path}: unknown preset {preset!r} (known: custom, "
                              f"{', '.join(ModelConfig.presets())})")
    try:
        config = ModelConfig.from_dict(given)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise CheckpointError(f"{cfg_path}: invalid model config ({_one_line(e)})") from e
    return config.replace(**overrides) if overrides else config


def check_state_dict(source: str | os.PathLike, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                     strict: bool = True) -> None:
    """Refuse ``state`` for a module whose state dict is ``own`` unless every tensor fits: same names (``strict``),
    same shapes, and a floating-point tensor wherever the module holds one (an integer or bool tensor is never
    cast into a weight). Floating dtypes may differ (a half-precision file loads into fp32)."""
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            parts = [f"missing {_names(missing)}" if missing else "", f"unexpected {_names(unexpected)}" if unexpected
                     else ""]
            raise CheckpointError(f"{source}: does not fit the model: {'; '.join(p for p in parts if p)}")
    for k, v in state.items():
        if k not in own:
            continue
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{source}: {k} is a {type(v).__name__}, not a tensor")
        w = own[k]
        if w.is_floating_point() and not v.is_floating_point():
            raise CheckpointError(f"{source}: tensor {k} has dtype {v.dtype}; the model expects a floating-point "
                                  f"{w.dtype} (not cast)")
        if v.shape != w.shape:
            raise CheckpointError(f"{source}: tensor {k} has shape {tuple(v.shape)}; the model expects "
                                  f"{tuple(w.shape)}")


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] + ("..." if len(text) > 300 else "")
