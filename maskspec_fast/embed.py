"""``python -m maskspec_fast.embed --checkpoint DIR|REPO|FILE.pth --data SPEC --out FILE``: embeddings for every file.

Clip embedding ``(D,)`` per file: fc_norm(mean of the patch tokens) of the whole file's log-mel (32 kHz PaSST
front end). Files up to ``config.frames`` frames are embedded in right-padded batches (padding tokens are
masked out of attention and pooling, so a file's embedding does not depend on its batch); longer files are cut
into sliding windows of ``config.frames`` (``--hop-frames``, default half a window; the last window aligned to
the end) and the window embeddings averaged. ``--timestamps`` adds HEAR-style timestamp embeddings every 40 ms
(:func:`maskspec_fast.inference.timestamp_embeddings_of_spec`).

Files that cannot be decoded (corrupt, empty, too short: under one 160 ms patch) are skipped and listed on
stderr, in the output (``failed_paths`` / ``failed_reasons``) and in ``OUT.failed.tsv``; nothing is dropped
silently. The exit status is 0 when every file was embedded, 3 when some were skipped, 2 on a usage error.

Outputs, readable without this package:
  ``.npz`` (numpy): ``paths (N,)`` str, ``embeddings (N, D)`` float32; with ``--timestamps`` also
  ``timestamp_embeddings (M, D)``, ``timestamps (M,)`` ms and ``timestamp_offsets (N+1,)`` (file i owns rows
  ``offsets[i]:offsets[i+1]``); ``failed_paths``, ``failed_reasons``.
  ``.parquet`` (needs pyarrow): one row per file: ``path``, ``embedding`` list<float32>, and with
  ``--timestamps`` ``timestamps`` list<float32>, ``timestamp_embeddings`` list<list<float32>>.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .inference import load_encoder, timestamp_embeddings_of_spec


@dataclass
class Embeddings:
    """What the CLI writes: one row per embedded file, and the files that failed with the reason."""

    paths: list[str] = field(default_factory=list)
    clip: list[np.ndarray] = field(default_factory=list)  # (D,) each
    ts_emb: list[np.ndarray] = field(default_factory=list)  # (n_ts, D) each
    ts: list[np.ndarray] = field(default_factory=list)  # (n_ts,) ms each
    failed: list[tuple[str, str]] = field(default_factory=list)


class _Files(Dataset):
    """Index -> ``(path, wave (N,) at 32 kHz or None, problem)``; decoding errors are returned, not raised."""

    def __init__(self, spec: str, missing_dir: str | None = None):
        from .data import build_dataset
        from .data.official import official_options
        from .data.spec import KINDS, parse_spec

        # audioset: / vggsound: list their missing downloads beside the output file (missing.csv)
        self.ds = build_dataset(spec, on_error="raise", **official_options(KINDS[parse_spec(spec)[0]], missing_dir))
        self.paths = getattr(self.ds, "paths", None)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str]:
        from .frontend.audio import MIN_SAMPLES, SAMPLE_RATE, AudioFileError, load_audio

        if self.paths is None:  # a generated set (synthetic:N): its fixed-length clips
            return f"{type(self.ds).__name__}:{i}", self.ds[i]["wave"], ""
        path = self.paths[i]
        try:
            return path, load_audio(path, SAMPLE_RATE, min_samples=MIN_SAMPLES), ""
        except AudioFileError as e:
            return path, None, e.problem


@torch.no_grad()
def embed_batch(clf: Any, frontend: Any, waves: list[torch.Tensor], hop_frames: int | None, timestamps: bool,
                device: torch.device) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Clip embeddings (and timestamp embeddings) of ``waves`` (each ``(N_i,)`` at 32 kHz)."""
    specs = [frontend(w.to(device).unsqueeze(0))[0] for w in waves]  # (F, T_i) each
    p, win = clf.config.patch_size, clf.config.frames
    clip: list[np.ndarray | None] = [None] * len(specs)
    short = [i for i, s in enumerate(specs) if s.shape[-1] <= win]
    if short:
        t_max = max(specs[i].shape[-1] for i in short) // p * p
        batch = torch.stack([torch.nn.functional.pad(specs[i][:, :t_max], (0, t_max - min(t_max, specs[i].shape[-1])))
                             for i in short])  # (B, F, t_max), right-padded
        lengths = torch.tensor([min(specs[i].shape[-1], t_max) for i in short], device=device)
        for i, e in zip(short, clf.embed(batch, lengths)):
            clip[i] = e.float().cpu().numpy()
    for i, s in enumerate(specs):
        if clip[i] is None:  # longer than the positional table: sliding windows, averaged
            emb, _ = clf.embed_windows(s.unsqueeze(0), hop_frames)
            clip[i] = emb[0].mean(0).float().cpu().numpy()
    ts = []
    if timestamps:
        for s in specs:
            e, c = timestamp_embeddings_of_spec(clf, s.unsqueeze(0))
            ts.append((e[0].float().cpu().numpy(), c.cpu().numpy()))
    return clip, ts


def run(checkpoint: str, data: str, device: str = "auto", batch_size: int = 16, hop_frames: int | None = None,
        timestamps: bool = False, num_workers: int = 0, progress: bool = True,
        missing_dir: str | None = None, compile: bool = False) -> Embeddings:
    """Embed every file of ``data`` (a data spec, e.g. ``folder:DIR``); see the module doc. ``missing_dir``: where
    ``audioset:`` / ``vggsound:`` specs write their missing.csv (the CLI: the folder of ``--out``). ``compile``:
    ``torch.compile`` the encoder's ``embed`` (the weights and the outputs' meaning are unchanged)."""
    from tqdm import tqdm

    from .frontend.logmel import LogMel

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    clf = load_encoder(checkpoint, dev)
    if compile:  # embed() is a method, not forward: compiled as an attribute of this instance (state_dict untouched)
        clf.embed = torch.compile(clf.embed)
    frontend = LogMel().to(dev).eval()
    files = _Files(data, missing_dir)
    loader = DataLoader(files, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    out = Embeddings()
    with tqdm(total=len(files), desc="embedding", unit="file", disable=not progress, file=sys.stderr) as bar:
        for batch in loader:
            good = [(p, w) for p, w, _ in batch if w is not None]
            out.failed += [(p, why) for p, w, why in batch if w is None]
            if good:
                clip, ts = embed_batch(clf, frontend, [w for _, w in good], hop_frames, timestamps, dev)
                out.paths += [p for p, _ in good]
                out.clip += clip
                out.ts_emb += [e for e, _ in ts]
                out.ts += [c for _, c in ts]
            bar.update(len(batch))
            bar.set_postfix(failed=len(out.failed))
    return out


def write(out: Embeddings, path: str | Path, timestamps: bool) -> list[Path]:
    """Write ``.npz`` or ``.parquet`` (by extension) and ``PATH.failed.tsv`` when files failed; returns the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = out.clip[0].shape[0] if out.clip else 0
    written = [path]
    if path.suffix == ".npz":
        arrays: dict[str, Any] = {
            "paths": np.array(out.paths, dtype=str),
            "embeddings": np.stack(out.clip).astype(np.float32) if out.clip else np.zeros((0, d), np.float32),
            "failed_paths": np.array([p for p, _ in out.failed], dtype=str),
            "failed_reasons": np.array([r for _, r in out.failed], dtype=str),
        }
        if timestamps:
            counts = [len(c) for c in out.ts]
            arrays["timestamp_offsets"] = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            arrays["timestamps"] = np.concatenate(out.ts).astype(np.float32) if out.ts else np.zeros(0, np.float32)
            arrays["timestamp_embeddings"] = (np.concatenate(out.ts_emb).astype(np.float32) if out.ts_emb
                                              else np.zeros((0, d), np.float32))
        np.savez(path, **arrays)
    elif path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f"{path}: writing .parquet needs pyarrow (pip install pyarrow), or use .npz") from e
        cols: dict[str, Any] = {
            "path": pa.array(out.paths, pa.string()),
            "embedding": pa.array([c.tolist() for c in out.clip], pa.list_(pa.float32())),
        }
        if timestamps:
            cols["timestamps"] = pa.array([c.tolist() for c in out.ts], pa.list_(pa.float32()))
            cols["timestamp_embeddings"] = pa.array([e.tolist() for e in out.ts_emb], pa.list_(pa.list_(pa.float32())))
        pq.write_table(pa.table(cols), path)
    else:
        raise ValueError(f"{path}: unknown output format {path.suffix!r}; use .npz or .parquet")
    if out.failed:
        tsv = path.with_name(path.name + ".failed.tsv")
        tsv.write_text("path\tproblem\n" + "".join(f"{p}\t{r}\n" for p, r in out.failed))
        written.append(tsv)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m maskspec_fast.embed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="save_pretrained directory, hub id 'org/name', or MAE-style .pth")
    p.add_argument("--data", required=True, help="data spec, e.g. folder:/path/to/audio or manifest:list.csv")
    p.add_argument("--out", required=True, help="output file: .npz or .parquet")
    p.add_argument("--timestamps", action="store_true", help="also write timestamp embeddings (every 40 ms)")
    p.add_argument("--batch-size", type=int, default=16, help="files per batch (default 16)")
    p.add_argument("--hop-frames", type=int, default=None, help="sliding-window hop for long files (default: half a window)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--num-workers", type=int, default=0, help="decoding worker processes (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true", help="torch.compile the encoder (worth it for many files)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from .data.official import say_missing_in_one_line

    say_missing_in_one_line()
    if Path(a.out).suffix not in (".npz", ".parquet"):
        print(f"error: --out {a.out}: use a .npz or .parquet file", file=sys.stderr)
        return 2
    try:
        out = run(a.checkpoint, a.data, a.device, a.batch_size, a.hop_frames, a.timestamps, a.num_workers, not a.quiet,
                  missing_dir=str(Path(a.out).resolve().parent), compile=a.compile)
        files = write(out, a.out, a.timestamps)
    except (FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"embedded {len(out.paths)} file(s) -> {', '.join(map(str, files))}", file=sys.stderr)
    if out.failed:
        print(f"skipped {len(out.failed)} file(s) that could not be read:", file=sys.stderr)
        for p, why in out.failed:
            print(f"  {p}: {why}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
