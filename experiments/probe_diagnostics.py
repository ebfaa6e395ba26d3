"""Why does a small encoder stay level with the log-mel baseline? Deterministic probe diagnostics on a labeled set.

Two questions, each answered with the same L-BFGS logistic regression as ``ssl_eval.py`` (no random stream,
k-fold cross-validation over the set's folds):

1. Frequency resolution. The baseline reads each of the 128 mel bins' mean and std over time. Averaging groups
   of adjacent bins into ``B`` bands first (``band_features``) shows how much of its accuracy needs fine frequency
   detail: an encoder of 16x16 patches pools into 128 / 16 = 8 frequency rows, so ``B = 8`` is the resolution its
   per-row pooling (``pool="freq_stats"``) hands the head explicitly.
2. Probe regularization. The probe's L2 penalty on standardized features, swept for the baseline and the encoders
   (the pre-trained one of ``--pretrained`` and a random one of the same configuration, the start of every
   pre-training), since 2 x 8 x 192 = 3072 per-row features on a few hundred clips may simply overfit.

    python experiments/probe_diagnostics.py --esc50 /tmp/real/labeled --pretrained /tmp/pt  # pt: ssl_eval.py's
        # --pretrained-cache folder; without --pretrained only the random encoder is probed
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))  # _common: environment record
import ssl_eval  # noqa: E402
from _common import environment, write_json  # noqa: E402

from maskspec_fast import Classifier, Model  # noqa: E402


def band_features(spec: torch.Tensor, bands: int) -> torch.Tensor:
    """Log-mel ``(N, F, T)`` -> mean and std over time of ``bands`` bands of ``F / bands`` adjacent bins averaged
    first: ``m_b(t) = mean_{f in band b} x_f(t)``, features ``[mean_t m_b, std_t m_b]`` ``(N, 2 * bands)``.
    ``bands = F`` is the baseline of ``ssl_eval.py`` (``logmel_features``)."""
    n, f, t = spec.shape
    if f % bands:
        raise ValueError(f"{bands} bands do not divide {f} mel bins")
    return ssl_eval.logmel_features(spec.reshape(n, bands, f // bands, t).mean(2))


def encoders(args: argparse.Namespace, frames: int) -> dict[str, Model]:
    """``{"pretrained": ..., "random": ...}``: the random encoder has the pre-trained one's configuration (else
    ``ssl_eval.py``'s default model) and its seed-``--seed`` initialization, as in ``ssl_eval.py``."""
    out: dict[str, Model] = {}
    if args.pretrained:
        out["pretrained"] = Model.from_pretrained(args.pretrained, fused=True)
        config = out["pretrained"].config
    else:
        config = ssl_eval.model_config(ssl_eval.build_parser().parse_args([]), frames)
    torch.manual_seed(args.seed)
    out["random"] = Model(config, fused=True)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data_args = ssl_eval.build_parser().parse_args([])
    data_args.esc50, data_args.folds = args.esc50, args.folds
    data_args.clip_seconds = args.clip_seconds or (5.0 if args.esc50 else 2.56)
    folds, names, desc = ssl_eval.labeled_folds(data_args)
    frames = min(s.shape[-1] for s, _ in folds.values()) // 16 * 16
    specs = {k: s[..., :frames] for k, (s, _) in folds.items()}
    labels = {k: y for k, (_, y) in folds.items()}
    c = len(names)
    print(f"labeled: {desc} -> {sum(len(y) for y in labels.values())} clips, {c} classes, {frames} frames")
    rows: list[dict[str, Any]] = []

    def cross_validate(feats: dict[int, torch.Tensor], l2: float) -> list[float]:
        return ssl_eval.cross_validated_probe(feats, labels, sorted(feats), c, l2, args.iters)

    def record(kind: str, name: str, l2: float, accs: list[float]) -> None:
        mean, std = statistics.fmean(accs), statistics.pstdev(accs)
        rows.append({"kind": kind, "features": name, "l2": l2, "mean": mean, "std": std, "per_fold": accs})
        print(f"  {kind:<10} {name:<28} l2={l2:<7g} {mean:.3f} +- {std:.3f}   "
              + " ".join(f"{a:.2f}" for a in accs), flush=True)

    print("1. log-mel statistics at coarser frequency resolution (bands of adjacent mel bins averaged first)")
    for b in args.bands:
        feats = {k: band_features(s, b) for k, s in specs.items()}
        record("bands", f"log-mel, {b} bands", args.band_l2, cross_validate(feats, args.band_l2))
    print("2. probe L2 penalty: the baseline and the encoders' per-row mean+std embeddings (last block)")
    feature_sets = {"log-mel, 128 bins": {k: ssl_eval.logmel_features(s) for k, s in specs.items()}}
    for name, model in encoders(args, frames).items():
        clf = Classifier.from_model(model, c, pool="freq_stats")
        feature_sets[f"{name} encoder, freq_stats"] = {k: ssl_eval.embed(clf, s) for k, s in specs.items()}
    for l2 in args.l2:
        for name, feats in feature_sets.items():
            record("l2", name, l2, cross_validate(feats, l2))
    result = {"labeled": desc, "classes": names, "frames": frames, "pretrained": args.pretrained, "rows": rows,
              "seconds": time.perf_counter() - t0, "environment": environment(torch.device("cpu"))}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{args.tag}.json", result)
    result["plot"] = str(_plot(rows, out / f"{args.tag}.png"))
    print(f"wrote {result['plot']} ({result['seconds']:.0f} s)")
    return result


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    bands = [r for r in rows if r["kind"] == "bands"]
    x = [int(r["features"].split(", ")[1].split()[0]) for r in bands]
    a.errorbar(x, [r["mean"] for r in bands], yerr=[r["std"] for r in bands], marker="o", capsize=3)
    a.set_xscale("log", base=2)
    a.set_xlabel("frequency bands (128 = every mel bin; 8 = one per 16-bin patch row)")
    a.set_ylabel("probe accuracy (mean +- std over folds)")
    a.set_title("log-mel baseline vs frequency resolution")
    for name in dict.fromkeys(r["features"] for r in rows if r["kind"] == "l2"):
        rs = [r for r in rows if r["kind"] == "l2" and r["features"] == name]
        b.plot([r["l2"] for r in rs], [r["mean"] for r in rs], marker="o", label=name)
    b.set_xscale("log")
    b.set_xlabel("probe L2 penalty")
    b.set_title("probe regularization")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--esc50", default=None, help="labeled set in ESC-50 layout (default: ssl_eval.py's built-in one)")
    p.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--clip-seconds", type=float, default=None, help="default: 5 for --esc50, 2.56 built-in")
    p.add_argument("--pretrained", default=None,
                   help="a save_pretrained folder of a pre-trained Model (ssl_eval.py --pretrained-cache DIR)")
    p.add_argument("--bands", type=int, nargs="+", default=[128, 64, 32, 16, 8])
    p.add_argument("--l2", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1], help="probe L2 penalties swept")
    p.add_argument("--band-l2", type=float, default=1e-3, help="L2 penalty of the band rows (ssl_eval.py's default)")
    p.add_argument("--iters", type=int, default=200, help="L-BFGS iterations")
    p.add_argument("--seed", type=int, default=0, help="initialization seed of the random encoder")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ssl_eval.RESULTS))
    p.add_argument("--tag", default="probe_diagnostics")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
