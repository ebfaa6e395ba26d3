"""Export the fine-tuning model with ``torch.export`` and to ONNX: log-mel or waveform in; logits, clip embeddings
or frame embeddings out; batch and time dynamic.

``python -m maskspec_fast.export CHECKPOINT OUT.onnx|OUT.pt2 --input waveform|logmel --output
embedding|frames|logits`` (``--help``); in Python :func:`export_onnx` / :func:`export_program`. Details and a
numpy-only runtime script: ``docs/EXPORT.md``, ``docs/onnx_embed.py``.

Inputs:
  * ``input="logmel"``: ``spec (B, n_mels, T)`` float32 log-mel with ``T = 16 * k`` frames, ``2 <= k <=
    config.grid_t`` (32 .. 992 frames for a 992-frame model). Crop to whole patches first (``spec[..., : T // 16 *
    16]``, what the model does itself). The front end stays outside: :class:`maskspec_fast.frontend.LogMel`.
  * ``input="waveform"``: ``wave (B, N)`` float32 mono at 32 kHz, ``min_samples <= N <= max_samples``
    (:func:`waveform_limits`: 9921 .. 322240 samples, 0.31 .. 10.07 s, for a 992-frame model), the whole front
    end inside the graph (:class:`WaveformModel`: pre-emphasis, STFT as a convolution with the windowed DFT basis,
    Kaldi mel, log, scaling; :class:`~maskspec_fast.frontend.dft_logmel.DFTLogMel`). The same numbers as
    ``Classifier.embed(log_mel(wave))`` / ``Classifier(log_mel(wave))`` to float32 rounding.

Outputs: ``logits (B, num_classes)``, ``embedding (B, pooled_dim)`` (the clip embedding, ``Classifier.embed``) or
``frames (B, T // 16, D)`` (one embedding per 160-ms patch column, ``Classifier.embed_frames``).

Longer audio goes in windows, outside the graph: clip embeddings (and logits) as the mean over windows of
``max_samples`` with a hop of half a window, the last window aligned to the end; frame embeddings from
consecutive windows of ``16 * 320 * grid_t`` samples (whole patch columns, so frame ``c`` of window ``w`` starts at
``w * grid_t + c`` columns). ``Classifier.embed_windows`` does the clip case in PyTorch.

Out-of-range inputs: longer than ``max_samples``, by any amount, the first node of the waveform graph (named
``input_wave_must_have_at_most_<max_samples>_samples``) fails with a broadcast error, before any allocation for the
front end (every node that reads a weight or the samples depends on its output; only shape arithmetic may run
before it); shorter than one patch column, a division-by-zero error (ONNX Runtime) or a failed assert
(torch.export). Zero-pad a short clip to ``min_samples``. NaN or Inf samples make that clip's row NaN (other rows
of the batch are unaffected); check ``np.isfinite`` first, as ``docs/onnx_embed.py`` does.

Why a copy with a one-column-longer positional table: the model fits its table to the input grid by cropping
(shorter inputs) or by returning it unchanged (input exactly as long). Tracing with a symbolic length would
specialize on that equality; with one spare (never used) column every admissible length takes the crop path, so
the graph is one program for all ``k`` and computes exactly what the model computes.

``onnx``, ``onnxscript`` (used by ``torch.onnx.export(dynamo=True)``) and ``onnxruntime`` are the optional extra
``pip install "maskspec_fast[export]"``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import ModelConfig
from .frontend.constants import HOP_LENGTH, SAMPLE_RATE
from .frontend.dft_logmel import DFTLogMel

EXPORT_HINT = 'ONNX export needs onnx and onnxscript (and onnxruntime to run it): pip install "maskspec_fast[export]"'


INPUTS = ("logmel", "waveform")
OUTPUTS = ("logits", "embedding", "frames")


class _Head(nn.Module):
    """``spec (B, F, T)`` -> ``logits (B, C)``, ``embedding (B, pooled_dim)`` or ``frames (B, T // p, D)``; wraps an
    export copy of a Classifier."""

    def __init__(self, clf: nn.Module, output: str):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.clf, self.output = clf, output

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return self.clf(spec)
        return self.clf.embed(spec) if self.output == "embedding" else self.clf.embed_frames(spec)


class WaveformModel(nn.Module):
    """``wave (B, N)`` float32 mono at 32 kHz -> the output of ``head`` on its log-mel: front end and model in one
    graph (:class:`~maskspec_fast.frontend.dft_logmel.DFTLogMel`, the convolution form of
    :class:`~maskspec_fast.frontend.LogMel`; the model crops the frames to whole patches, ``T // p * p``).

    Admissible lengths ``min_samples <= N <= max_samples`` (:func:`waveform_limits`). ``guard (max_samples,)`` is
    zeros added to the input first: a longer input fails at that first node (its ONNX node is named after the
    limit), before the front end could allocate for it; this costs one add per sample."""

    def __init__(self, head: nn.Module, max_samples: int):
        super().__init__()
        self.frontend = DFTLogMel()
        self.head = head
        self.register_buffer("guard", torch.zeros(max_samples), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave + self.guard[: wave.shape[1]]  # (B, N); a shape error when N > max_samples
        clf = self.head.clf
        # The positional table's row indices are computed from the input's shape alone, not from its data, so
        # ONNX Runtime may run their Gather before the guard: an input 2x too long then failed there ("indices
        # element out of data bounds"). A zero that exists only once the guard has run (the sum of an empty
        # slice of its output: 0 for any samples, NaN included) is added to those indices, so every node that
        # reads the table waits for the guard.
        clf.after_guard = wave[:, :0].sum().to(torch.long)  # () int64, always 0
        try:
            spec = self.frontend(wave)  # (B, M, T)
            # whole patches only, T -> p * (T // p): as a gather, not a slice or a view, so that export does not
            # specialize on whether T is a multiple of p (where the slice would be a no-op)
            p = clf.config.patch_size
            cols = torch.arange(spec.shape[2] // p * p, device=spec.device)
            return self.head(spec.index_select(2, cols))  # (B, M, p * (T // p))
        finally:
            clf.after_guard = None


def _export_class(cls: type) -> type:
    """``cls`` whose positional table is cropped by a gather of the grid's positions instead of a slice and a
    reshape: the same numbers, but torch.export does not have to prove the reshape of a strided slice a view for
    a patch-column count that is itself a floor division of the waveform length (it cannot, and would refuse)."""

    class Export(cls):
        # set by WaveformModel while it runs: () int64 zero computed from the guard's output (see its forward)
        after_guard: torch.Tensor | None = None

        def encoder_pos(self, grid: tuple[int, int]) -> torch.Tensor:
            gf, gt = grid
            if gf != self.config.grid_f:
                return super().encoder_pos(grid)
            i = torch.arange(gf * gt, device=self.pos_embed.device)  # (L,) token index, row-major over (gf, gt)
            row = i // gt
            ids = 1 + row * self.config.grid_t + (i - row * gt)  # its row in the table (1 + gf * grid_t, D)
            if self.after_guard is not None:
                ids = ids + self.after_guard  # + 0: orders the table's Gather after the length guard
            return torch.cat([self.pos_embed[:, :1], self.pos_embed.index_select(1, ids)], dim=1)  # (1, 1+L, D)

    Export.__name__ = Export.__qualname__ = f"Export{cls.__name__}"
    return Export


def waveform_limits(config: ModelConfig) -> tuple[int, int]:
    """``(min_samples, max_samples)`` a waveform graph takes: ``N`` samples make ``T = 1 + (N - 1) // 320`` frames
    and ``T // 16`` patch columns (the last up-to-15 frames are dropped, as the model drops them), from two columns
    (``320 * 31 + 1`` = 9921 samples, 0.31 s at 32 kHz; export specializes a size of 1, as for log-mel input) to
    the positional table's ``grid_t``, ``320 * (16 * grid_t + 15)`` samples: 322240 (10.07 s) for a 992- or
    1000-frame model. Pad a shorter clip with zeros to ``min_samples``; cut a longer one into windows."""
    p = config.patch_size
    return HOP_LENGTH * (2 * p - 1) + 1, HOP_LENGTH * (p * config.grid_t + p - 1)


def exportable(clf: nn.Module, output: str = "logits", input: str = "logmel") -> nn.Module:
    """An eval-mode copy of ``clf`` whose positional table has one spare time column (see module doc); with
    ``input="waveform"`` the front end is inside (:class:`WaveformModel`)."""
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
    c = clf.config
    gf, gt, d = c.grid_f, c.grid_t, c.embed_dim
    state = {k: v.detach().float().cpu() for k, v in clf.state_dict().items()}
    body = state["pos_embed"][:, 1:].reshape(1, gf, gt, d)  # (1, gf, gt, D)
    body = torch.cat([body, body.new_zeros(1, gf, 1, d)], dim=2)  # (1, gf, gt + 1, D); the spare column is unused
    state["pos_embed"] = torch.cat([state["pos_embed"][:, :1], body.reshape(1, -1, d)], dim=1)
    # the reference ops (plain PyTorch) export; compiled fused kernels would not
    x = _export_class(type(clf))(c.replace(frames=(gt + 1) * c.patch_size), clf.num_classes, fused=False)
    x.load_state_dict(state, strict=True)
    x.eval()
    head = _Head(x, output).eval()
    return head if input == "logmel" else WaveformModel(head, waveform_limits(c)[1]).eval()


def dynamic_shapes(clf: nn.Module, input: str = "logmel") -> dict[str, dict[int, Any]]:
    """Batch dynamic (1..4096); log-mel time ``16 * k`` with ``2 <= k <= grid_t`` (export specializes sizes 0 and
    1), waveform length ``min_samples .. max_samples`` (:func:`waveform_limits`)."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=4096)
    if input == "waveform":
        lo, hi = waveform_limits(clf.config)
        return {"wave": {0: batch, 1: Dim("samples", min=lo, max=hi)}}
    cols = Dim("patch_columns", min=2, max=clf.config.grid_t)
    return {"spec": {0: batch, 2: clf.config.patch_size * cols}}


def example_input(clf: nn.Module, batch: int = 2, columns: int | None = None, input: str = "logmel") -> torch.Tensor:
    c = clf.config
    k = columns or max(2, min(c.grid_t, 3))
    if input == "waveform":
        return torch.randn(batch, k * c.patch_size * HOP_LENGTH + 7) * 0.1
    return torch.randn(batch, c.n_mels, k * c.patch_size)


def export_program(clf: nn.Module, output: str = "logits", input: str = "logmel") -> torch.export.ExportedProgram:
    """``torch.export`` program of ``clf`` on log-mel or waveform input (batch and time dynamic); run it with
    ``program.module()(x)``, save it with ``torch.export.save(program, "model.pt2")``."""
    m = exportable(clf, output, input)
    with torch.no_grad():
        # deferred asserts: a condition the tracer cannot prove for a whole range (for the waveform graph,
        # `8 % (8 * k) != 0` with k the patch columns, a floor division of the length) becomes an assert in the
        # graph instead of a refusal; every one holds in the range dynamic_shapes() states
        return torch.export.export(m, (example_input(clf, input=input),), dynamic_shapes=dynamic_shapes(clf, input),
                                   prefer_deferred_runtime_asserts_over_guards=True)


def onnx_metadata(clf: nn.Module, output: str, input: str) -> dict[str, str]:
    """What a runtime needs to feed the graph, stored in the ONNX file's ``metadata_props``."""
    c = clf.config
    meta = {"maskspec_input": input, "maskspec_output": output, "sample_rate": str(SAMPLE_RATE),
            "hop_length": str(HOP_LENGTH), "n_mels": str(c.n_mels), "patch_frames": str(c.patch_size),
            "max_frames": str(c.frames), "embed_dim": str(c.embed_dim), "pool": c.pool,
            "output_dim": str({"logits": clf.num_classes, "embedding": c.pooled_dim, "frames": c.embed_dim}[output])}
    if input == "waveform":
        lo, hi = waveform_limits(c)
        meta.update(min_samples=str(lo), max_samples=str(hi))
    if output == "frames":
        meta["frame_hop_ms"] = str(c.patch_size * 1000 * HOP_LENGTH / SAMPLE_RATE)
    return meta


def export_onnx(clf: nn.Module, path: str | os.PathLike, output: str = "logits", opset: int = 18,
                input: str = "logmel") -> str:
    """Write an ONNX model; returns the path. Input ``spec`` (``batch x n_mels x frames``) or, with
    ``input="waveform"``, ``wave`` (``batch x samples``, 32 kHz mono); batch and time dynamic. Output ``logits``,
    ``embedding`` or ``frames``. :func:`onnx_metadata` goes into the file's metadata."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(EXPORT_HINT) from e
    prog = export_program(clf, output, input)
    path = os.fspath(path)
    name = "wave" if input == "waveform" else "spec"
    with torch.no_grad():
        onx = torch.onnx.export(prog, dynamo=True, input_names=[name], output_names=[output], opset_version=opset,
                                verbose=False)
    proto = onx.model_proto
    if input == "waveform":
        _name_guard(proto, waveform_limits(clf.config)[1])
    onnx.helper.set_model_props(proto, onnx_metadata(clf, output, input))
    onnx.save(proto, path)
    return path


def _name_guard(proto: Any, max_samples: int) -> None:
    """Name the node that adds the length guard (the first Add reading the input) so that onnxruntime's shape error
    for a too-long input says what is wrong."""
    for node in proto.graph.node:
        if node.op_type == "Add" and "wave" in node.input:
            node.name = f"input_wave_must_have_at_most_{max_samples}_samples"
            return


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m maskspec_fast.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="save_pretrained directory, hub id 'org/name', or MAE-style .pth")
    p.add_argument("out", help="output file: .onnx (ONNX) or .pt2 (torch.export program, torch.export.save)")
    p.add_argument("--input", choices=INPUTS, default="waveform",
                   help="graph input: 'waveform' (B, N) at 32 kHz, front end inside (default), or 'logmel' (B, 128, T)")
    p.add_argument("--output", choices=OUTPUTS, default="embedding",
                   help="graph output: clip 'embedding' (default), 'frames' (160 ms each) or 'logits'")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    out = Path(a.out)
    if out.suffix not in (".onnx", ".pt2"):
        print(f"error: {out}: use a .onnx or .pt2 file", file=sys.stderr)
        return 2
    from .inference import load_encoder

    try:
        clf = load_encoder(a.checkpoint, "cpu")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".onnx":
            export_onnx(clf, out, a.output, a.opset, a.input)
        else:
            torch.export.save(export_program(clf, a.output, a.input), str(out))
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    limits = ""
    if a.input == "waveform":
        lo, hi = waveform_limits(clf.config)
        limits = f", {lo}..{hi} samples at {SAMPLE_RATE} Hz"
    print(f"wrote {out} ({a.input} -> {a.output}{limits})", file=sys.stderr)
    return 0


__all__ = ["EXPORT_HINT", "INPUTS", "OUTPUTS", "WaveformModel", "dynamic_shapes", "example_input", "export_onnx",
           "export_program", "exportable", "main", "onnx_metadata", "waveform_limits"]

if __name__ == "__main__":
    raise SystemExit(main())
