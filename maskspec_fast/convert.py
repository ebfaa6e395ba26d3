"""``python -m maskspec_fast.convert IN.pth OUT_DIR``: re-save a MAE-family ``.pth`` as safetensors + config.json.

Without ``--trust`` the file is read exactly as ``from_mae_checkpoint`` reads it (weights-only, allowlist). With
``--trust`` it is fully unpickled -- this RUNS CODE stored in the file, so only do it for files you trust (e.g.
ones you wrote yourself) -- and only its tensors and plain training flags are kept. OUT_DIR then loads with
``Model.from_pretrained`` / ``Classifier.from_pretrained``, which never unpickle anything.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

import torch

_PLAIN = (str, int, float, bool, type(None))


def _plain_flags(args: Any) -> dict[str, Any] | None:
    """Training flags reduced to plain values (lists/tuples of plain values kept; anything else dropped)."""
    d = vars(args) if isinstance(args, argparse.Namespace) else args
    if not isinstance(d, dict):
        return None
    out = {}
    for k, v in d.items():
        if isinstance(v, _PLAIN) or (isinstance(v, (list, tuple)) and all(isinstance(x, _PLAIN) for x in v)):
            out[str(k)] = v
        elif isinstance(v, os.PathLike):
            out[str(k)] = os.fspath(v)
    return out


def trusted_to_safe_pth(src: str, dst: str) -> None:
    """Fully unpickle ``src`` (trusted!) and write ``{"model": state, "args": plain flags}`` to ``dst``."""
    obj = torch.load(src, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):  # torch.save(model): needs the model's class importable here
        obj = obj.state_dict()
    if isinstance(obj, dict):
        state = next((obj[k] for k in ("model", "state_dict", "model_state") if isinstance(obj.get(k), dict)), obj)
        args = _plain_flags(obj.get("args"))
    else:
        state, args = obj, None
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    if not tensors:
        raise ValueError(f"{src}: no state dict of tensors found")
    torch.save({"model": tensors, "args": args}, dst)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m maskspec_fast.convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoint", help="MAE-family .pth (official MaskSpec / AudioMAE training checkpoint, or a state dict)")
    p.add_argument("out_dir", help="directory to write config.json + model.safetensors into")
    p.add_argument("--kind", choices=("auto", "pretrain", "classifier"), default="auto",
                   help="pretrain = Model (needs a decoder), classifier = Classifier; auto: pretrain if a decoder is present")
    p.add_argument("--num-classes", type=int, default=None, help="classifier head size (default: the checkpoint's head)")
    p.add_argument("--producer", choices=("auto", "maskspec", "audiomae"), default="auto",
                   help="who wrote the checkpoint (auto: from its args and shapes)")
    p.add_argument("--trust", action="store_true",
                   help="fully unpickle the file (runs code inside it!); only for files you trust")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from .interop import read_mae_checkpoint
    from .model import Classifier, Model

    with tempfile.TemporaryDirectory(prefix="maskspec_convert_") as tmp:
        src = a.checkpoint
        if a.trust:
            src = os.path.join(tmp, "safe.pth")
            trusted_to_safe_pth(a.checkpoint, src)
        try:
            kind = a.kind
            if kind == "auto":
                ck = read_mae_checkpoint(src, a.producer)
                kind = "pretrain" if "decoder_embed.weight" in ck.state and not ck.swin_decoder else "classifier"
            if kind == "pretrain":
                model = Model.from_mae_checkpoint(src, producer=a.producer)
            else:
                model = Classifier.from_mae_checkpoint(src, num_classes=a.num_classes, producer=a.producer)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}".replace(src, a.checkpoint), file=sys.stderr)
            return 2
    out = model.save_pretrained(a.out_dir)
    print(f"wrote {type(model).__name__} ({model.config.embed_dim}-dim, depth {model.config.depth}) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
