"""Export the fine-tuning model (log-mel in, logits out) with ``torch.export`` and to ONNX, time axis dynamic.

The exported graph takes ``spec (B, n_mels, T)`` float32 log-mel with ``T = 16 * k`` frames, ``2 <= k <=
config.grid_t`` (e.g. 32 .. 992 frames for a 992-frame model); batch size is dynamic too. Crop a spectrogram to
whole patches first (``spec[..., : T // 16 * 16]``, what the model does itself); audio longer than the positional
table goes in sliding windows (``Classifier.embed_windows`` does it in PyTorch). Output: ``logits (B,
num_classes)``, or with ``output="embedding"`` the clip embedding ``(B, D)``.

The front end stays outside the graph: waveform -> log-mel is :class:`maskspec_fast.frontend.LogMel` (PyTorch)
or the same recipe in numpy (PAPER.md: pre-emphasis 0.97, 1024-point STFT, 25 ms Hann window, 10 ms hop, 128
Kaldi mel bins 0-15 kHz, ``(log(mel + 1e-5) + 4.5) / 5``).

Why a copy with a one-column-longer positional table: the model fits its table to the input grid by cropping
(shorter inputs) or by returning it unchanged (input exactly as long). Tracing with a symbolic length would
specialize on that equality; with one spare (never used) column every admissible length takes the crop path, so
the graph is one program for all ``k`` and computes exactly what the model computes.

``onnx``, ``onnxscript`` (used by ``torch.onnx.export(dynamo=True)``) and ``onnxruntime`` are the optional extra
``pip install "maskspec_fast[export]"``.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

EXPORT_HINT = 'ONNX export needs onnx and onnxscript (and onnxruntime to run it): pip install "maskspec_fast[export]"'


class _Head(nn.Module):
    """``spec (B, F, T) -> logits (B, C)`` or ``embedding (B, D)``; wraps an export copy of a Classifier."""

    def __init__(self, clf: nn.Module, output: str):
        super().__init__()
        if output not in ("logits", "embedding"):
            raise ValueError(f"output must be 'logits' or 'embedding', got {output!r}")
        self.clf, self.output = clf, output

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.clf(spec) if self.output == "logits" else self.clf.embed(spec)


def exportable(clf: nn.Module, output: str = "logits") -> nn.Module:
    """An eval-mode copy of ``clf`` whose positional table has one spare time column (see module doc)."""
    c = clf.config
    gf, gt, d = c.grid_f, c.grid_t, c.embed_dim
    state = {k: v.detach().float().cpu() for k, v in clf.state_dict().items()}
    body = state["pos_embed"][:, 1:].reshape(1, gf, gt, d)  # (1, gf, gt, D)
    body = torch.cat([body, body.new_zeros(1, gf, 1, d)], dim=2)  # (1, gf, gt + 1, D); the spare column is unused
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], body.reshape(1, -1, d)], dim=1)
    # the reference ops (plain PyTorch) export; compiled fused kernels would not
    x = type(clf)(c.replace(frames=(gt + 1) * c.patch_size), clf.num_classes, fused=False)
    x.load_state_dict(state, strict=True)
    x.eval()
    return _Head(x, output).eval()


def dynamic_shapes(clf: nn.Module) -> dict[str, dict[int, Any]]:
    """Batch dynamic (1..4096) and time ``16 * k`` with ``2 <= k <= grid_t`` (export specializes sizes 0 and 1)."""
    from torch.export import Dim

    cols = Dim("patch_columns", min=2, max=clf.config.grid_t)
    return {"spec": {0: Dim("batch", min=1, max=4096), 2: clf.config.patch_size * cols}}


def example_input(clf: nn.Module, batch: int = 2, columns: int | None = None) -> torch.Tensor:
    c = clf.config
    k = columns or max(2, min(c.grid_t, 3))
    return torch.randn(batch, c.n_mels, k * c.patch_size)


def export_program(clf: nn.Module, output: str = "logits") -> torch.export.ExportedProgram:
    """``torch.export`` program of ``clf`` on log-mel input (batch and time dynamic); run it with
    ``program.module()(spec)``, save it with ``torch.export.save(program, "model.pt2")``."""
    m = exportable(clf, output)
    with torch.no_grad():
        return torch.export.export(m, (example_input(clf),), dynamic_shapes=dynamic_shapes(clf))


def export_onnx(clf: nn.Module, path: str | os.PathLike, output: str = "logits", opset: int = 18) -> str:
    """Write an ONNX model with input ``spec`` (``batch x n_mels x frames``, batch and frames dynamic) and output
    ``logits`` (or ``embedding``); returns the path."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(EXPORT_HINT) from e
    m = exportable(clf, output)
    path = os.fspath(path)
    with torch.no_grad():
        onx = torch.onnx.export(
            m, (example_input(clf),), dynamo=True, dynamic_shapes=dynamic_shapes(clf), input_names=["spec"],
            output_names=[output], opset_version=opset, verbose=False,
        )
    onx.save(path)
    return path


def onnx_session(path: str | os.PathLike) -> Any:
    """An onnxruntime CPU session for an exported file."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError(EXPORT_HINT) from e
    return ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


__all__ = ["EXPORT_HINT", "dynamic_shapes", "example_input", "export_onnx", "export_program", "exportable",
           "onnx_session"]
