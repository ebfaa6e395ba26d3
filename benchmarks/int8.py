"""int8 judged on a trained classifier by what a user loses: accuracy on held-out clips, the embeddings'
nearest-neighbour ranking, and the speed it buys, fp32 and int8 side by side in one run.

    make demo                                   # writes runs/demo/finetune/final (the fine-tuned classifier)
    python benchmarks/int8.py                   # that classifier on the demo's 440 held-out clips
    python benchmarks/int8.py --checkpoint runs/esc50/final --data esc50:/data/ESC-50:folds=5

Both variants are the waveform-in ONNX graph (:func:`maskspec_fast.export.export_onnx`, the front end inside) run
by ONNX Runtime on the CPU: fp32, and after ``onnxruntime.quantization.quantize_dynamic`` (int8 weights of MatMul
and Gemm, activations quantized per call). For every clip: the logits (accuracy, the change in points) and the
clip embedding; the ranking check asks, for each clip, whether its nearest neighbour among the other clips (cosine)
is the same clip in int8 as in fp32 (``nn_top1_kept``), and how many of its 10 nearest neighbours are shared
(``nn_overlap10``). int8 is accepted when the accuracy moves by at most ``--max-accuracy-change`` points (0.5) either
way (a gain counts as a move: it is clips whose prediction int8 changed, ``predictions_changed`` counts them all) and
at least ``--min-nn-kept`` (0.95) of the top-1 neighbours are kept. ``--per-channel`` quantizes weights per output
channel instead of per tensor. Speed: the median time of a batch of clips,
fp32 and int8 timed in alternating rounds (``--rounds``), as x real time per core.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # run from a clone without installing
from _common import environment, write_json  # noqa: E402

from maskspec_fast import Classifier  # noqa: E402
from maskspec_fast.data import build_dataset  # noqa: E402
from maskspec_fast.export import export_onnx  # noqa: E402
from maskspec_fast.frontend import SAMPLE_RATE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/demo/finetune/final", help="a fine-tuned classifier (save_pretrained)")
    p.add_argument("--data", default="synthetic:440:seed=2", help="held-out labelled clips (default: make demo's)")
    p.add_argument("--clip-seconds", type=float, default=None, help="clip length (default: the checkpoint's input)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per ONNX Runtime call (default 8)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="ORT intra-op threads (default all)")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds of fp32 and int8 (default 5)")
    p.add_argument("--max-accuracy-change", type=float, default=0.5,
                   help="points of accuracy int8 may move, either way (default 0.5)")
    p.add_argument("--per-channel", action="store_true", help="int8 weights per output channel (default per tensor)")
    p.add_argument("--min-nn-kept", type=float, default=0.95, help="fraction of top-1 neighbours int8 must keep")
    p.add_argument("--results-file", default="benchmarks/results/int8.json", help="JSON output ('' for none)")
    return p.parse_args(argv)


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(sess, waves: np.ndarray, batch: int) -> np.ndarray:
    """The graph's first output over every clip ``(N, ...)``, ``batch`` clips per call."""
    return np.concatenate([sess.run(None, {"wave": waves[i : i + batch]})[0] for i in range(0, len(waves), batch)])


def neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    """``(N, k)`` indices of each clip's ``k`` nearest other clips by cosine similarity."""
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1)[:, :k]


def main(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    clf = Classifier.from_pretrained(args.checkpoint).eval()
    clip_s = args.clip_seconds or clf.config.frames * 320 / SAMPLE_RATE
    ds = build_dataset(args.data, clip_seconds=clip_s)
    if ds.num_classes != clf.num_classes or ds.multilabel:
        raise SystemExit(f"{args.data}: {ds.num_classes} classes (multilabel={ds.multilabel}); the classifier has "
                         f"{clf.num_classes}: give the held-out set it was trained for")
    waves = np.stack([ds[i]["wave"].numpy() for i in range(len(ds))]).astype(np.float32)  # (N, samples)
    labels = ds.labels().numpy()
    out: dict = {"checkpoint": args.checkpoint, "data": args.data, "clips": len(ds), "clip_seconds": clip_s}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for output in ("logits", "embedding"):
            fp32 = Path(tmp) / f"{output}.onnx"
            export_onnx(clf, fp32, output, input="waveform")
            q = Path(tmp) / f"{output}_int8.onnx"
            quantize_dynamic(str(fp32), str(q), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             per_channel=args.per_channel)
            paths[output] = {"fp32": fp32, "int8": q}
        sessions = {v: {o: session(paths[o][v], args.threads) for o in paths} for v in ("fp32", "int8")}
        got = {v: {o: run_all(sessions[v][o], waves, args.batch_size) for o in paths} for v in sessions}
        batch = waves[: args.batch_size]
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(args.rounds):  # alternating rounds: both variants see the same machine state
            for v in ("fp32", "int8"):
                t = time.perf_counter()
                sessions[v]["embedding"].run(None, {"wave": batch})
                times[v].append(time.perf_counter() - t)
    for v in ("fp32", "int8"):
        acc = float((got[v]["logits"].argmax(1) == labels).mean())
        med = statistics.median(times[v])
        out[v] = {"accuracy": acc, "batch_median_ms": 1e3 * med,
                  "x_realtime_per_core": len(batch) * clip_s / med / args.threads}
    nn32, nn8 = neighbours(got["fp32"]["embedding"], 10), neighbours(got["int8"]["embedding"], 10)
    e32, e8 = got["fp32"]["embedding"], got["int8"]["embedding"]
    cos = (e32 * e8).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1))
    out.update(
        accuracy_change_points=100 * (out["int8"]["accuracy"] - out["fp32"]["accuracy"]),
        predictions_changed=int((got["fp32"]["logits"].argmax(1) != got["int8"]["logits"].argmax(1)).sum()),
        nn_top1_kept=float((nn32[:, 0] == nn8[:, 0]).mean()),
        nn_overlap10=float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nn32, nn8)])),
        embedding_cos_min=float(cos.min()), speedup=out["fp32"]["batch_median_ms"] / out["int8"]["batch_median_ms"])
    out["accepted"] = bool(abs(out["accuracy_change_points"]) <= args.max_accuracy_change
                           and out["nn_top1_kept"] >= args.min_nn_kept)
    scheme = "per channel" if args.per_channel else "per tensor"
    print(f"{args.checkpoint} on {args.data} ({len(ds)} clips of {clip_s:g} s), ORT {args.threads} thread(s), "
          f"int8 weights {scheme}:")
    for v in ("fp32", "int8"):
        r = out[v]
        print(f"  {v}: accuracy {r['accuracy']:.4f}, batch of {len(batch)} {r['batch_median_ms']:.0f} ms "
              f"({r['x_realtime_per_core']:.1f}x real time per core)")
    print(f"  int8 vs fp32: accuracy {out['accuracy_change_points']:+.2f} points ({out['predictions_changed']} of "
          f"{len(ds)} predictions changed), top-1 neighbour kept "
          f"{out['nn_top1_kept']:.3f}, 10-NN overlap {out['nn_overlap10']:.3f}, min embedding cos "
          f"{out['embedding_cos_min']:.4f}, speed {out['speedup']:.2f}x -> "
          f"{'ACCEPTED' if out['accepted'] else 'REJECTED'} (limits: +-{args.max_accuracy_change} points, "
          f"{args.min_nn_kept} of top-1 neighbours)")
    write_json(args.results_file, {"bench": "int8", "env": environment(torch.device("cpu")), "args": vars(args),
                                   **out})
    return out


if __name__ == "__main__":
    main(parse_args())
