"""Reading and writing checkpoints of MAE-family training code (``.pth`` files in MAE/timm naming).

Supported producers (what :func:`read_mae_checkpoint` recognizes):

* **MaskSpec** (WangHelin1997/MaskSpec) and **image-layout MAE code applied to 128 x T spectrograms**: loaded as
  they are (our own layout).
* **AudioMAE** (facebookresearch/AudioMAE, ``audio_exp``): time is the image height (1024 frames x 128 bins,
  grid 64 x 8). Converted exactly: the patch-embedding kernel is transposed, the positional tables and (global
  decoder, ``decoder_mode=0``) the per-patch prediction rows are reordered into our (freq, time) order. Refused:
  its Swin-window decoder (``decoder_mode=1``; no MaskSpec equivalent -- load the encoder with
  ``Classifier.from_mae_checkpoint``) and overlapping patches (``use_custom_patch``). Its weights expect its own
  front end (16 kHz Kaldi fbank, its normalization), not ours: a warning says so.
* **Image MAE** (facebookresearch/mae, 3-channel RGB patches): refused (not a spectrogram model).

A training checkpoint of these scripts (``util/misc.py: save_model``) is ``{"model", "optimizer", "epoch",
"scaler", "args"}`` with ``args`` an ``argparse.Namespace`` of plain flags. ``.pth`` files are untrusted input:
they are read with ``torch.load(..., weights_only=True)`` plus the allowlist :data:`SAFE_GLOBALS` and nothing
else; any other pickled global is refused with a ``ValueError`` that names it (never a full unpickle).
The model configuration is inferred from tensor shapes; head counts are not stored in weights, so they follow
the ViT convention of 64-wide heads (MaskSpec's decoder: 16 heads of 32) unless given.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import ModelConfig
from .ops.pos_embed import fit_pos_tables
from .serialization import check_state_dict

CONVERT_HINT = (
    "If you trust this file, convert it once with `python -m maskspec_fast.convert {path} OUT_DIR --trust` "
    "(re-saves it as safetensors + config.json) and load OUT_DIR with from_pretrained."
)


def _numpy_scalar_globals() -> list[Any]:
    """What a pickled numpy scalar (e.g. ``np.float64(0.5)`` in a flag) needs: the scalar constructor and dtypes.

    Reconstructing these builds a number from raw bytes; nothing is called on user data."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    out: list[Any] = [np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar"])
            out.append(m.scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in ("BoolDType", "Int32DType", "Int64DType", "UInt8DType", "Float32DType", "Float64DType"):
            if hasattr(dtypes, name):
                out.append(getattr(dtypes, name))
    return out


# The training flags of MAE-family scripts: an argparse.Namespace of str/int/float/bool/None/lists (read from
# their argparse definitions and from init_distributed_mode, which adds rank/gpu/distributed/dist_backend).
# Forks sometimes store pathlib paths (output_dir) or numpy scalars; those rebuild plain values, so they are
# allowed too. torch.device, OrderedDict, tensors and the optimizer / GradScaler state dicts need no entry.
SAFE_GLOBALS: list[Any] = [
    argparse.Namespace,
    pathlib.PosixPath,
    pathlib.PurePosixPath,
    pathlib.WindowsPath,
    pathlib.PureWindowsPath,
    *_numpy_scalar_globals(),
]


def _pickle_globals(path: str | os.PathLike) -> set[str]:
    """``module.name`` of every global a plain (non-zip) pickle file references, read with ``pickletools``
    (opcodes only; nothing is executed). ``STACK_GLOBAL`` takes the two strings pushed before it."""
    import io
    import pickletools

    found: set[str] = set()
    data = io.BytesIO(open(path, "rb").read())
    while data.tell() < len(data.getvalue()):  # legacy torch.save files are several pickles in a row
        strings: list[str] = []
        memo: dict[int, str] = {}
        try:
            for op, arg, _ in pickletools.genops(data):
                if op.name == "GLOBAL":
                    found.add(str(arg).replace(" ", "."))
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                    strings.append(memo[arg])
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.add(f"{strings[-2]}.{strings[-1]}")
        except Exception:
            break
    return found


def _forbidden_globals(path: str | os.PathLike, err: Exception) -> list[str]:
    """The pickled globals outside the allowlist: from torch's message, else by scanning the file's opcodes."""
    import zipfile

    found = re.findall(r"(?:Unsupported global: GLOBAL|GLOBAL) ([\w.]+)", str(err))
    if found:
        return sorted(set(found))
    try:
        if zipfile.is_zipfile(path):
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        else:
            names = _pickle_globals(path)
    except Exception:
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    # what every tensor checkpoint pickles (weights-only accepts these); a pickled nn.Module etc. stays listed
    plain = re.compile(
        r"^(collections\.OrderedDict|torch\._utils\._rebuild\w*|torch\.\w*Storage|torch\.device|torch\.Size"
        r"|torch\.(b?float\d*|u?int\d+|bool|half|double|long))$"
    )
    return sorted(n for n in names - allowed if not plain.match(n))


def load_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with weights-only unpickling and :data:`SAFE_GLOBALS`; anything else is a ValueError."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        bad = _forbidden_globals(path, e)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""  # torch's messages span many lines
        what = f"it pickles {', '.join(bad)}, which is not in the allowlist" if bad else f"{type(e).__name__}: {first}"
        raise ValueError(
            f"{path}: cannot be read as a weights-only PyTorch checkpoint ({what}). Full unpickling would run "
            f"code from the file, so it is never done. " + CONVERT_HINT.format(path=path)
        ) from e


@dataclass
class MaeCheckpoint:
    """A MAE-family checkpoint: the state dict (``module.`` stripped), its training flags and who wrote it.

    ``producer``: ``"maskspec"`` (our layout) or ``"audiomae"`` (time-as-height layout, see module doc)."""

    path: str
    state: dict[str, torch.Tensor]
    args: dict[str, Any] | None = None
    epoch: int | None = None
    producer: str = "maskspec"
    extras: dict[str, Any] = field(default_factory=dict)
    swin_decoder: bool = False  # AudioMAE decoder_mode=1: decoder weights dropped (see audiomae_to_maskspec)


def _state_and_rest(path: str | os.PathLike, obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    rest: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                rest = {k: v for k, v in obj.items() if k != key}
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors found (looked at 'model', 'state_dict', 'model_state')")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}, rest


def read_mae_checkpoint(path: str | os.PathLike, producer: str = "auto") -> MaeCheckpoint:
    """Read a MAE-family ``.pth`` safely and convert it to MaskSpec layout.

    ``producer``: ``"auto"`` (from ``args`` and shapes), ``"maskspec"`` or ``"audiomae"`` (say so for a bare
    AudioMAE state dict without ``args``: a 64 x 8 grid and an 8 x 64 grid have the same shapes)."""
    state, rest = _state_and_rest(path, load_checkpoint(path))
    args = rest.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else None)
    epoch = rest.get("epoch") if isinstance(rest.get("epoch"), int) else None
    kind = detect_producer(path, state, args) if producer == "auto" else producer
    if kind not in ("maskspec", "audiomae"):
        raise ValueError(f"producer must be 'auto', 'maskspec' or 'audiomae', got {producer!r}")
    swin = False
    if kind == "audiomae":
        state, swin = audiomae_to_maskspec(path, state, args)
    extras = {k: v for k, v in rest.items() if k not in ("args", "epoch")}
    return MaeCheckpoint(str(path), state, args, epoch, kind, extras, swin)


def detect_producer(path: str | os.PathLike, state: dict[str, torch.Tensor], args: dict[str, Any] | None) -> str:
    """``"maskspec"`` or ``"audiomae"``; image MAE (RGB patches) is refused here with the reason."""
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.dim() == 4 and w.shape[1] == 3:
        raise ValueError(
            f"{path}: an image MAE/ViT checkpoint (patch_embed takes 3 RGB channels, {tuple(w.shape)}); "
            "MaskSpec models read 1-channel spectrograms"
        )
    a = args or {}
    if a.get("audio_exp") or "target_length" in a or "use_custom_patch" in a or "decoder_mode" in a:
        return "audiomae"
    if any("relative_position" in k for k in state):  # AudioMAE's Swin-window decoder blocks
        return "audiomae"
    return "maskspec"


def _grid_tf(n_pos: int, freq_cols: int, path: Any) -> tuple[int, int]:
    if n_pos % freq_cols:
        raise ValueError(
            f"{path}: AudioMAE positional table has {n_pos} patches, not a (time x {freq_cols}) grid of "
            "non-overlapping 16 x 16 patches (overlapping patches, use_custom_patch, cannot be converted)"
        )
    return n_pos // freq_cols, freq_cols


def _time_major_to_freq_major(table: torch.Tensor, grid_tf: tuple[int, int]) -> torch.Tensor:
    """``(1, 1+T*F, D)`` tokens row-major over (time, freq) -> row-major over (freq, time); CLS stays first."""
    gt, gf = grid_tf
    cls, x = table[:, :1], table[:, 1:]
    x = x.reshape(1, gt, gf, -1).transpose(1, 2).reshape(1, gt * gf, -1)  # (1, F*T, D)
    return torch.cat([cls, x], dim=1)


def audiomae_to_maskspec(
    path: Any, state: dict[str, torch.Tensor], args: dict[str, Any] | None, n_mels: int = 128
) -> tuple[dict[str, torch.Tensor], bool]:
    """Exact conversion of AudioMAE weights (input ``(B, 1, T, F)``) to our layout (input ``(B, 1, F, T)``).

    Patch embedding ``(D, 1, p_t, p_f)`` -> ``(D, 1, p_f, p_t)``; positional tables reordered from (time, freq)
    to (freq, time) token order; ``decoder_pred`` rows (values within a patch) from (time, freq) to (freq, time).
    Attention and mean pooling do not depend on token order, so the converted encoder computes the same
    function on the transposed spectrogram. A Swin-window decoder (``decoder_mode=1``) is dropped (second
    return value True): its local windows depend on the grid orientation and have no MaskSpec equivalent."""
    a = args or {}
    if a.get("use_custom_patch"):
        raise ValueError(f"{path}: AudioMAE with overlapping patches (use_custom_patch, stride 10) cannot be converted")
    out = dict(state)
    w = state.get("patch_embed.proj.weight")
    if w is None or w.dim() != 4 or w.shape[1] != 1 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"{path}: AudioMAE checkpoint lacks a square 1-channel patch_embed.proj.weight")
    p = w.shape[-1]
    out["patch_embed.proj.weight"] = w.transpose(-1, -2).contiguous()
    grid, swin = None, False
    for key in ("pos_embed", "decoder_pos_embed"):
        if key in state:
            grid = _grid_tf(state[key].shape[1] - 1, n_mels // p, path)
            out[key] = _time_major_to_freq_major(state[key], grid).contiguous()
    if "decoder_pred.weight" in state:
        swin = a.get("decoder_mode", 0) != 0 or any(k.startswith("decoder_blocks.") and "relative_position" in k
                                                    for k in state)
        if swin:
            # the decoder's local attention windows depend on the (time, freq) grid: not expressible here
            for k in [k for k in out if k.startswith(("decoder_", "mask_token"))]:
                del out[k]
        else:
            idx = torch.arange(p * p).reshape(p, p).t().reshape(-1)  # our (f, t) row <- their (t, f) row
            out["decoder_pred.weight"] = state["decoder_pred.weight"][idx].contiguous()
            out["decoder_pred.bias"] = state["decoder_pred.bias"][idx].contiguous()
    warnings.warn(
        f"{path}: AudioMAE weights, converted to MaskSpec layout (grid {grid[1] if grid else '?'} freq x "
        f"{grid[0] if grid else '?'} time). They expect AudioMAE's front end (16 kHz Kaldi fbank, its "
        "normalization), not maskspec_fast.frontend.LogMel: feed them matching features.",
        stacklevel=3,
    )
    return out, swin


def infer_config(state: dict[str, Any], n_mels: int = 128, **overrides: Any) -> ModelConfig:
    """Sizes from the shapes of a MAE/timm state dict; ``overrides`` win."""
    if "patch_embed.proj.weight" not in state:
        raise ValueError("state dict has no patch_embed.proj.weight: not a ViT/MAE checkpoint")
    w = state["patch_embed.proj.weight"]  # (D, 1, p, p)
    if w.dim() != 4 or w.shape[1] != 1:
        raise ValueError(f"patch_embed.proj.weight has shape {tuple(w.shape)}; expected (D, 1, p, p) for spectrograms")
    n_mels = overrides.pop("n_mels", n_mels)
    d, p = w.shape[0], w.shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    n_pos = state["pos_embed"].shape[1] - 1 if "pos_embed" in state else None
    gf = n_mels // p
    frames = (n_pos // gf) * p if n_pos else 992
    cfg: dict[str, Any] = dict(n_mels=n_mels, patch_size=p, embed_dim=d, depth=depth, num_heads=max(1, d // 64),
                               frames=frames)
    mlp = state.get("blocks.0.mlp.fc1.weight")
    if mlp is not None:
        cfg["mlp_ratio"] = mlp.shape[0] / d
    if "decoder_embed.weight" in state:
        dd = state["decoder_embed.weight"].shape[0]
        cfg["decoder_embed_dim"] = dd
        cfg["decoder_depth"] = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks."))
        cfg["decoder_num_heads"] = 16 if dd == 512 else max(1, dd // 64)
    cfg.update(overrides)
    return ModelConfig(**cfg)


def config_overrides_from_args(args: dict[str, Any] | None) -> dict[str, Any]:
    """ModelConfig fields the training flags state (``norm_pix_loss``, ``mask_ratio``)."""
    out: dict[str, Any] = {}
    for key in ("norm_pix_loss", "mask_ratio"):
        if args and isinstance(args.get(key), (bool, float, int)) and not isinstance(args.get(key), str):
            out[key] = type(getattr(ModelConfig, key))(args[key])
    return out


def check_pretrain_decoder(ck: MaeCheckpoint) -> None:
    """A pre-training Model needs a decoder we can run: refuse AudioMAE's Swin decoder with the reason."""
    if ck.swin_decoder:
        raise ValueError(
            f"{ck.path}: AudioMAE with its Swin-window decoder (decoder_mode=1): the decoder's local windows have no "
            "MaskSpec equivalent, so it cannot be a pre-training Model. Load the encoder with "
            "Classifier.from_mae_checkpoint(path, num_classes)."
        )
    if "decoder_embed.weight" not in ck.state:
        raise ValueError(f"{ck.path}: has no decoder (a fine-tuned ViT?); load it with Classifier.from_mae_checkpoint")


def save_mae_checkpoint(state: dict[str, torch.Tensor], path: str | os.PathLike) -> str:
    """Write ``{"model": state_dict}`` as MAE-style code saves and loads it (``load_state_dict(sd, strict=True)``)."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in state.items()}}, tmp)
    os.replace(tmp, path)
    return path


def pretrain_from_mae(cls: type, path: str | os.PathLike, fused: bool | None, producer: str, overrides: dict) -> Any:
    """``Model.from_mae_checkpoint``: a pre-training model from a MAE-family ``.pth`` (strict load)."""
    ck = read_mae_checkpoint(path, producer)
    check_pretrain_decoder(ck)
    model = cls(infer_config(ck.state, **{**config_overrides_from_args(ck.args), **overrides}), fused=fused)
    state = fit_pos_tables(ck.state, model, path)
    check_state_dict(path, state, model.state_dict())  # names, shapes, no integer tensor cast into a weight
    model.load_state_dict(state, strict=True)
    model.source = {"path": str(path), "producer": ck.producer, "epoch": ck.epoch}
    return model


def classifier_from_mae(
    cls: type, path: str | os.PathLike, num_classes: int | None, fused: bool | None, producer: str, overrides: dict
) -> Any:
    """``Classifier.from_mae_checkpoint``: a fine-tuned ViT (``fc_norm`` + ``head``) loads whole when
    ``num_classes`` matches or is None; otherwise (pre-training checkpoints) the encoder loads, the head is new."""
    ck = read_mae_checkpoint(path, producer)
    state = ck.state
    head = state.get("head.weight")
    n = num_classes if num_classes is not None else (head.shape[0] if head is not None else None)
    if n is None:
        raise ValueError(f"{path}: has no classification head; pass num_classes")
    clf = cls(infer_config(state, **overrides), n, fused=fused)
    if head is not None and head.shape[0] == n and "fc_norm.weight" in state:
        own = fit_pos_tables({k: v for k, v in state.items() if k in clf.state_dict()}, clf, path)
        check_state_dict(path, own, clf.state_dict())
        clf.load_state_dict(own, strict=True)
    else:
        if head is not None and "fc_norm.weight" not in state:
            warnings.warn(
                f"{path}: a ViT fine-tuned with CLS-token pooling (norm + head, no fc_norm); a MaskSpec Classifier "
                "mean-pools into fc_norm, so only the encoder is loaded and fc_norm/head start fresh",
                stacklevel=3,
            )
        clf.load_encoder(state, path)
    clf.source = {"path": str(path), "producer": ck.producer, "epoch": ck.epoch}
    return clf
